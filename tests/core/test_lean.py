"""What the core answers without litellm (`lean`, `prices`, `tokens`) is what litellm answers.

These tests import litellm to ask it: the core's process does not (tests/core/test_lean_import.py).
"""

from __future__ import annotations

import json
import math

import litellm
import pytest

from streamgate.contract import Usage
from streamgate.core import LiteLLMConfig, lean, prices, tokens
from streamgate.core.provider import LiteLLMProvider


@pytest.mark.parametrize(
    "model",
    ["openai/gpt-4o-mini", "openai/fake", "openai/org/some-model", "hosted_vllm/my-model", "hosted_vllm/gpt-4o"],
)
@pytest.mark.parametrize(
    "env", [{}, {"HOSTED_VLLM_API_KEY": "vllm-key", "HOSTED_VLLM_API_BASE": "http://vllm:8000/v1"}]
)
def test_lean_models_resolve_as_litellm_resolves_them(
    model: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert lean.resolve(model) == tuple(litellm.get_llm_provider(model))


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",  # a bare name: litellm's tables say which provider
        "anthropic/claude-3-5-sonnet-20240620",  # not a lean provider
        "openai/gpt-mini-latest",  # an alias in litellm's table: litellm names the model it stands for
    ],
)
def test_other_models_are_litellms_to_resolve(model: str) -> None:
    assert lean.resolve(model) is None


def test_a_model_that_needs_litellm_still_resolves_through_it() -> None:
    provider = LiteLLMProvider(LiteLLMConfig(model="anthropic/claude-3-5-sonnet-20240620", api_key="test-key"))

    assert provider.resolve_model(None) == "anthropic/claude-3-5-sonnet-20240620"
    assert provider._known["anthropic/claude-3-5-sonnet-20240620"] == "anthropic"
    assert "anthropic/claude-3-5-sonnet-20240620" not in provider._lean


def _litellm_cost(model: str, usage: Usage) -> float | None:
    try:
        prompt, completion = litellm.cost_per_token(
            model=model, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
        )
    except Exception:
        return None
    return float(prompt) + float(completion)


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o-mini",
        "openai/gpt-4o",
        "openai/gpt-4.1",
        "openai/gpt-5-mini",
        "openai/fake",
        "hosted_vllm/my-model",
        "hosted_vllm/gpt-4o",
        "openai/gpt-5.5",
        "openai/gpt-mini-latest",
    ],
)
@pytest.mark.parametrize("usage", [Usage(12, 34), Usage(1000, 500), Usage(300_000, 1000)])
def test_the_provider_prices_as_litellm_does(model: str, usage: Usage) -> None:
    provider = LiteLLMProvider(LiteLLMConfig(model=model, api_key="test-key"))

    cost = provider.cost(model, usage)

    expected = _litellm_cost(model, usage)
    assert (cost is None) == (expected is None), (cost, expected)
    if expected is not None:
        assert cost == pytest.approx(expected, rel=1e-12)


def test_the_price_of_gpt_4o_mini_needs_no_litellm() -> None:
    price = prices.lookup("openai", "gpt-4o-mini")

    assert price == prices.Price(1.5e-07, 6e-07)
    assert prices.lookup("hosted_vllm", "my-model") is None  # no price: unknown, never 0
    assert prices.lookup("hosted_vllm", "gpt-4o-mini") is None  # another provider's row prices no one else


def test_every_flat_price_of_the_table_is_litellms() -> None:
    path = prices.table_path()
    assert path is not None
    with open(path, "rb") as file:
        names = [key for key, row in json.load(file).items() if isinstance(row, dict)]
    checked = 0
    for provider in sorted(prices.PROVIDERS):
        for name in names:
            price = prices.lookup(provider, name)
            for usage in (Usage(1000, 500), Usage(200_000, 1000)):
                cost = None if price is None else price.cost(usage)
                if price is not None and cost is None:
                    continue  # litellm's to price (a tier, an alias, a price by the second...)
                expected = _litellm_cost(f"{provider}/{name}", usage)
                assert (cost is None) == (expected is None), (provider, name, cost, expected)
                assert cost is None or expected is None or math.isclose(cost, expected, rel_tol=1e-12), (name, usage)
                checked += 1
    assert checked > 5000


def test_the_embedded_model_costs_nothing() -> None:
    provider = LiteLLMProvider(LiteLLMConfig(model="streamgate/default", api_base=None, api_key=None))

    assert provider.cost("streamgate/default", Usage(10, 20)) == 0.0


TEXTS = [
    "hello",
    "Hello, world! Streaming tokens, one at a time.",
    "ünïcödé 日本語のテキスト, emoji 🎉🎉 and <|endoftext|> as text",
    "word " * 700 + "\n\n  tabs\tand   spaces  " * 30,  # past litellm's 1,024-character pieces
]


@pytest.mark.parametrize(
    "model",
    ["openai/gpt-4o-mini", "openai/fake", "hosted_vllm/my-model", "openai/gpt-4", "openai/gpt-5-mini", "openai/o3"],
)
def test_token_counts_are_litellms(model: str) -> None:
    provider = LiteLLMProvider(LiteLLMConfig(model=model, api_key="test-key"))
    provider_name, _, name = model.partition("/")
    assert tokens.encoding_for(provider_name, name) is not None, "counted without litellm"

    for text in TEXTS:
        assert provider.count_tokens(model, text) == litellm.token_counter(model=model, text=text), text


def test_tokenizers_litellm_picks_otherwise_are_left_to_it() -> None:
    assert tokens.encoding_for("hosted_vllm", "meta-llama/llama-3-8b-instruct") is None
    assert tokens.encoding_for("hosted_vllm", "deepseek-ai/deepseek-v3") is None
    assert tokens.encoding_for("anthropic", "claude-3-5-sonnet-20240620") is None
