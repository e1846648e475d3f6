"""Providers: where tokens come from. `LiteLLMProvider` reaches any provider litellm knows.

litellm (about 4 s and 220 MiB to import) loads only when a model needs it: the embedded model
and the lean providers' models (OpenAI-compatible upstreams) are resolved (`lean`), streamed
(`embedded`, `openai_stream`), priced (`prices`) and counted (`tokens`) without it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Any

import aiohttp

from streamgate.contract import GenerationParameters, StreamError, StreamRequest, Usage, model_not_found

from . import embedded, lean, openai_stream, prices, tokens
from .config import LiteLLMConfig
from .observe import UPSTREAM_HEADERS
from .policy import ModelPolicy
from .preconnect import Preconnect
from .translate import translate
from .upstream import Delta

logger = logging.getLogger("streamgate.core")

#: litellm providers that speak OpenAI's chat-completions stream, streamed by the lean path.
LEAN_PROVIDERS = frozenset({"openai", "hosted_vllm"})
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
#: The loggers litellm gives stderr handlers of its own.
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
#: Resolved model names kept (with `allow_any_model`, clients may name many).
MAX_KNOWN_MODELS = 10_000


@functools.cache
def _litellm() -> Any:
    """litellm, imported on the first need of it (about 4 s and 220 MiB), with its logging tamed."""
    import litellm

    litellm.suppress_debug_info = True
    for name in LITELLM_LOGGERS:
        # litellm writes its records to stderr through handlers of its own, unescaped, and copies
        # them to ours too: let ours alone write them (one line a record, see streamgate._logs).
        litellm_logger = logging.getLogger(name)
        litellm_logger.handlers.clear()
        litellm_logger.propagate = True
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)  # litellm logs every call at INFO
    return litellm


def _resolve(model: str) -> lean.Resolved:
    """(name at the upstream, provider, key, base URL) for a litellm model string: without litellm
    when `lean` knows the answer, else litellm's. Raises when litellm does not know the model."""
    resolved = lean.resolve(model)
    if resolved is not None:
        return resolved
    name, provider, key, base = _litellm().get_llm_provider(model)
    return str(name), str(provider), key, base


class LiteLLMProvider:
    """Streams from any litellm model; the embedded `streamgate/default` needs no key."""

    def __init__(self, config: LiteLLMConfig | None = None) -> None:
        self.config = config or LiteLLMConfig()
        #: The config file's models by name: each an alias with its own upstream (`streamgate.core.models`).
        self._routes = {route.name: route for route in self.config.routes}
        try:
            # With a model list, every entry has its own upstream: no provider is "home" to a flag's api_base.
            home = None if self._routes else _resolve(self.config.model)[1]
        except Exception:
            home = None  # an unknown default model: `resolve_model` below says so
        #: The default model's provider: the operator's api_base and key are its settings, no one else's.
        self._home: str | None = home
        if home in ("ollama", "ollama_chat") and self.config.api_base:
            # litellm's model-info lookup for Ollama (`/api/show`) does not get the api_base: it reads
            # OLLAMA_API_BASE, else localhost:11434. The operator's upstream is the one to ask.
            os.environ.setdefault("OLLAMA_API_BASE", self.config.api_base)
        for route in self.config.routes:
            if route.api_base and _resolve(route.model)[1] in ("ollama", "ollama_chat"):
                os.environ.setdefault("OLLAMA_API_BASE", route.api_base)  # as above, for the list's Ollama
        self._policy = ModelPolicy(
            tuple(self._routes) or (self.config.model, *self.config.fallback_models, *self.config.allowed_models),
            self.config.allow_any_model,
            home,
        )
        #: Models resolved so far → their litellm provider, least recently used first (bounded).
        self._known: OrderedDict[str, str] = OrderedDict()
        #: OpenAI-compatible models: name at the upstream, key and base URL litellm found for them.
        self._lean: dict[str, tuple[str, str | None, str | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._preconnect = Preconnect() if self.config.preconnect else None
        #: Finished lean-path responses waiting for their body's end, to give their connection back.
        self.draining: set[asyncio.Task[None]] = set()
        self._unpriced: set[str] = set()
        # Fail at start-up, not on the first request, when a configured model is unknown.
        self.resolve_model(None)
        for model in (*self.config.fallback_models, *self._routes):
            self.resolve_model(model)

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The models the operator named (the default first); with `allow_any_model`, others too."""
        return self._policy.allowed

    def fallbacks(self, model: str) -> tuple[str, ...]:
        """The models to try, in order, when `model` fails before its first token."""
        route = self._routes.get(model)
        return route.fallbacks if route is not None and route.fallbacks else self.config.fallback_models

    def model_limit(self, model: str) -> int:
        """Streams of `model` that may be open at once (0: only the server's limit)."""
        route = self._routes.get(model)
        return route.max_concurrent_streams if route is not None else 0

    def _target(self, model: str) -> str:
        """The litellm model string a name stands for (a name of the model list, or the string itself)."""
        route = self._routes.get(model)
        return route.model if route is not None else model

    def _upstream(self, model: str) -> tuple[str | None, str | None]:
        """The operator's api_base and key for `model`: its list entry's, or the flags' for the default
        model's provider; none for any other model (the key of one upstream never goes to another)."""
        route = self._routes.get(model)
        if route is not None:
            return route.api_base, route.api_key
        if self._home is not None and self._known.get(model) == self._home:
            return self.config.api_base, self.config.api_key
        return None, None

    def resolve_model(self, requested: str | None) -> str:
        """The model a request asked for (or the default), if the operator allows it; raises `StreamError`."""
        model = requested or self.config.model
        known = self._known
        if model in known:
            known.move_to_end(model)
            return model
        self._policy.check_name(model)
        try:
            # Without the operator's api_base: litellm would hand it back as this model's base URL,
            # whatever the provider (the api_base is the default model's provider's, `_kwargs`).
            name, provider, key, base = _resolve(self._target(model))
        except Exception as exc:
            raise model_not_found(
                f"unknown model {model!r}: name it as litellm does, with its provider, e.g. 'openai/gpt-4o-mini'"
            ) from exc
        self._policy.check_provider(model, provider)
        # Bounded, least recently used out: a flood of new names costs each its own resolution,
        # never the lean path of the models in use.
        known[model] = provider
        if provider in LEAN_PROVIDERS:
            self._lean[model] = (name, key, base)
        if len(known) > MAX_KNOWN_MODELS:
            old, _ = known.popitem(last=False)
            self._lean.pop(old, None)
        return model

    def _kwargs(self, request: StreamRequest, model: str) -> dict[str, Any]:
        parameters = request.parameters.merged_over(self.config.parameters)
        kwargs = parameters.to_kwargs()
        kwargs.update(
            model=self._target(model),
            messages=[m.to_openai() for m in request.messages],
            num_retries=0,
            drop_params=True,
        )
        # The operator's upstream for this model: its URL and key; another upstream never gets them.
        api_base, api_key = self._upstream(model)
        if api_base:
            kwargs["api_base"] = api_base
        if api_key:
            kwargs["api_key"] = api_key
        return kwargs

    def _split(self, model: str) -> tuple[str, str]:
        """The provider prefix of the litellm model string `model` stands for, and the rest."""
        provider, _, name = self._target(model).partition("/")
        return provider, name

    def stream(self, request: StreamRequest, model: str) -> AsyncGenerator[Delta, None]:
        trace = UPSTREAM_HEADERS.get()  # a traced stream's `traceparent`, sent upstream (`streamgate.core.observe`)
        provider, name = self._split(model)
        if provider == embedded.PROVIDER:
            return self._stream_embedded(request, name)
        if self.config.enable_streaming and self.config.fast_path and model in self._lean:
            return self._stream_lean(request, model, trace)
        return self._stream_litellm(request, model, trace)

    def _stream_embedded(self, request: StreamRequest, name: str) -> AsyncGenerator[Delta, None]:
        """The embedded model, straight from its generator (no upstream, no litellm)."""
        messages = [m.to_openai() for m in request.messages]
        params = request.parameters.merged_over(self.config.parameters).to_kwargs()
        pace = self.config.embedded_tokens_per_second
        if self.config.enable_streaming:
            return embedded.stream(name, messages, params, pace)
        return _one(embedded.complete(messages, params, pace))

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
                trace_configs=[self._preconnect.trace] if self._preconnect is not None else None,
            )
            if self._preconnect is not None:
                self._preconnect.attach(self._session)
        return self._session

    def _stream_lean(
        self, request: StreamRequest, model: str, trace: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Delta, None]:
        name, key, base = self._lean[model]
        operator_base, operator_key = self._upstream(model)  # the operator's upstream (see `_kwargs`)
        base = operator_base or base or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
        body: dict[str, Any] = {
            "model": name,
            "messages": [m.to_openai() for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **request.parameters.merged_over(self.config.parameters).to_kwargs(),
        }
        api_key = operator_key or key or os.environ.get("OPENAI_API_KEY")
        url = (base or DEFAULT_OPENAI_BASE).rstrip("/") + "/chat/completions"
        return openai_stream.stream_chat(
            self._session_for_loop(),
            url,
            api_key,
            body,
            coalesce=self.config.coalesce,
            draining=self.draining,
            extra_headers=trace,
        )

    async def close(self) -> None:
        """Close the connections of the lean path."""
        try:
            if self._preconnect is not None:
                await self._preconnect.close()
            await openai_stream.stop_draining(self.draining)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _stream_litellm(
        self, request: StreamRequest, model: str, trace: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Delta, None]:
        kwargs = self._kwargs(request, model)
        if trace:
            kwargs["extra_headers"] = dict(trace)
        if not self.config.enable_streaming:
            async for delta in self._whole(kwargs):
                yield delta
            return
        try:
            upstream = await _litellm().acompletion(stream=True, stream_options={"include_usage": True}, **kwargs)
        except Exception as exc:
            raise translate(exc) from exc
        try:
            async for chunk in upstream:
                yield _delta(chunk)
        except StreamError:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        finally:
            # A plain break would leave the upstream request running: close it.
            await upstream.aclose()

    async def _whole(self, kwargs: dict[str, Any]) -> AsyncGenerator[Delta, None]:
        try:
            response = await _litellm().acompletion(stream=False, **kwargs)
        except Exception as exc:
            raise translate(exc) from exc
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        yield Delta(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else None,
            model=response.model,
        )

    async def warm_up(self) -> None:
        """Pay first-call costs before the first user does: litellm's (lazy imports, its stream
        wrapper, tokenizer) when a configured model needs litellm; litellm stays unloaded otherwise."""
        request = StreamRequest.create(query="hello", parameters=GenerationParameters(max_tokens=1))
        upstream = self._stream_embedded(request, embedded.MODEL)
        try:
            async for _ in upstream:
                pass
        finally:
            await upstream.aclose()
        # The tokenizers of the configured models, read now (in a thread: 0.2-0.5 s and 40-70 MiB each):
        # read on first need instead, the first stream that ended early would hold every stream back
        # that long, on the event loop (measured: the first cancelled stream of a benchmark's window).
        for model in (self.config.model, *self.config.fallback_models, *self._routes):
            provider, name = self._split(model)
            encoding = tokens.encoding_for(provider, name) if provider != embedded.PROVIDER else None
            if encoding is not None:
                try:
                    await asyncio.to_thread(tokens.encoding, encoding)
                except Exception:  # counted roughly instead (`count_tokens`), as when it fails then
                    logger.warning("cannot read the tokenizer %s of model %s", encoding, model, exc_info=True)
        if "litellm" not in sys.modules:
            return
        litellm = _litellm()
        # A mocked answer: litellm's whole stream path, offline, with no upstream asked.
        response = await litellm.acompletion(
            model="openai/streamgate-warm-up",
            messages=[{"role": "user", "content": "hello"}],
            mock_response="hello",
            stream=True,
        )
        try:
            async for _ in response:
                pass
        finally:
            await response.aclose()
        self.count_tokens(self.config.model, "hello")

    def count_tokens(self, model: str, text: str) -> int:
        provider, name = self._split(model)
        if provider == embedded.PROVIDER:
            return embedded.count_tokens(text)
        encoding = tokens.encoding_for(provider, name)
        try:
            if encoding is not None:
                return tokens.count(encoding, text)
            return int(_litellm().token_counter(model=self._target(model), text=text))
        except Exception:
            return embedded.count_tokens(text)

    def cost(self, model: str, usage: Usage) -> float | None:
        if model in self._unpriced:
            return None
        provider, name = self._split(model)
        if provider == embedded.PROVIDER:
            if name != embedded.MODEL:
                return None  # only `streamgate/default` has a price (litellm's answer too)
            return embedded.PRICE[0] * usage.prompt_tokens + embedded.PRICE[1] * usage.completion_tokens
        price = prices.lookup(provider, name)
        if price is None:
            return None  # litellm's table has no price for it: unknown, not free
        flat = price.cost(usage)
        if flat is not None:
            return flat
        try:
            prompt, completion = _litellm().cost_per_token(
                model=self._target(model), prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )
        except Exception:
            # litellm's price table does not know the model: unknown, not free. Asking again
            # costs about 0.2 ms a stream, so remember it.
            if len(self._unpriced) < 10_000:
                self._unpriced.add(model)
            return None
        return float(prompt) + float(completion)


async def _one(delta: Awaitable[Delta]) -> AsyncGenerator[Delta, None]:
    """A stream of the one `Delta` an awaitable gives."""
    yield await delta


def _delta(chunk: Any) -> Delta:
    """A litellm `ModelResponseStream` as a `Delta`."""
    usage = getattr(chunk, "usage", None)
    choices = chunk.choices
    if choices:
        choice = choices[0]
        content = choice.delta.content or ""
        finish = choice.finish_reason
    else:
        content, finish = "", None
    return Delta(
        content=content,
        finish_reason=finish,
        usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else None,
        model=getattr(chunk, "model", None),
    )
