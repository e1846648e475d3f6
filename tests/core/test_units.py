"""Pure pieces: request validation, parameters from JSON, the upstream error table, timing."""

from __future__ import annotations

import httpx
import litellm
import pytest

from streamgate.core import ErrorCode, GenerationParameters, StreamError, StreamRequest
from streamgate.core.metrics import StreamClock
from streamgate.core.translate import translate


def test_a_query_becomes_one_user_message_and_gets_a_request_id() -> None:
    request = StreamRequest.create(query="hi")
    assert [(m.role, m.content) for m in request.messages] == [("user", "hi")]
    assert len(request.request_id) == 32


def test_parameters_from_json_reject_unknown_fields_and_wrong_types() -> None:
    with pytest.raises(StreamError, match="unknown parameter"):
        GenerationParameters.from_mapping({"temprature": 1})
    with pytest.raises(StreamError, match="max_tokens must be a int"):
        GenerationParameters.from_mapping({"max_tokens": "5"})
    with pytest.raises(StreamError, match="temperature must be a float"):
        GenerationParameters.from_mapping({"temperature": True})
    assert GenerationParameters.from_mapping({"temperature": 1, "stop": "x"}) == GenerationParameters(
        temperature=1.0, stop=("x",)
    )


def test_request_parameters_override_the_configured_defaults() -> None:
    defaults = GenerationParameters(temperature=0.1, max_tokens=100)
    merged = GenerationParameters(max_tokens=5).merged_over(defaults)
    assert merged.to_kwargs() == {"temperature": 0.1, "max_tokens": 5}


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://upstream/v1/chat/completions"))


@pytest.mark.parametrize(
    ("exc", "code", "retryable"),
    [
        (litellm.RateLimitError("slow down", "openai", "m"), ErrorCode.RESOURCE_EXHAUSTED, True),
        (litellm.Timeout("took too long", "m", "openai"), ErrorCode.DEADLINE_EXCEEDED, True),
        (litellm.ContextWindowExceededError("too long", "m", "openai"), ErrorCode.INVALID_ARGUMENT, False),
        (litellm.AuthenticationError("bad key", "openai", "m"), ErrorCode.INTERNAL, False),
        (litellm.ServiceUnavailableError("down", "openai", "m"), ErrorCode.UNAVAILABLE, True),
        (ConnectionResetError("reset"), ErrorCode.UNAVAILABLE, True),
        (KeyError("bug"), ErrorCode.INTERNAL, False),
    ],
)
def test_upstream_exceptions_map_to_one_error_model(exc: Exception, code: ErrorCode, retryable: bool) -> None:
    error = translate(exc)
    assert (error.code, error.retryable) == (code, retryable)
    assert "litellm." not in error.message


def test_tokens_per_second_counts_from_the_first_token() -> None:
    clock = StreamClock()
    clock.start -= 1.0  # a second before the first token
    clock.chunk()
    clock.first_token = (clock.first_token or 0) - 0.5  # then 0.5 s of generating
    metrics = clock.finish(completion_tokens=11)
    assert metrics.ttft_ms == pytest.approx(500, abs=50)
    assert metrics.tokens_per_second == pytest.approx(20, rel=0.1)
    assert metrics.chunks == 1


def test_an_upstream_usage_of_the_wrong_type_counts_as_none() -> None:
    # The second rerun: a string prompt_tokens crashed the lean path with a TypeError (INTERNAL).
    from streamgate.core.openai_stream import _delta

    delta = _delta({"choices": [], "usage": {"prompt_tokens": "12", "completion_tokens": -3}})
    assert delta.usage is not None and (delta.usage.prompt_tokens, delta.usage.completion_tokens) == (0, 0)
    assert _delta({"choices": [], "usage": "lots"}).usage is None
