"""Which models a client may name: the operator decides what the server may reach.

A litellm model string is more than a name: some providers take the upstream's URL from it
(`oobabooga/http://10.0.0.5/...`, `huggingface/https://...`), and some connect to a server on
this machine unless told otherwise (`ollama/x` is localhost:11434). A client that may name any
model string may therefore make the core connect anywhere (SSRF), or pick a provider path that
costs many times more CPU per stream. So:

- By default a client may name only the models the operator wrote: `model`, `fallback_models`
  and `allowed_models`. Those are taken as written, URLs included.
- `allow_any_model` (an explicit choice) opens every other litellm model, except a model string
  that carries a URL or a host, and, unless the operator set `api_base` (then every request goes
  there), a provider whose endpoint is a self-hosted server (on this machine by default).
"""

from __future__ import annotations

import re

from streamgate.contract import invalid

#: litellm providers that talk to a self-hosted server, whose address comes from the model string,
#: an environment variable or a local default (localhost:11434 for Ollama, ...), not from the operator.
SELF_HOSTED = frozenset(
    {
        "custom",
        "custom_openai",
        "docker_model_runner",
        "hosted_vllm",
        "huggingface",
        "lemonade",
        "litellm_proxy",
        "llamafile",
        "lm_studio",
        "ollama",
        "ollama_chat",
        "oobabooga",
        "openai_like",
        "petals",
        "triton",
        "vllm",
        "xinference",
    }
)

#: A URL (scheme://, //host), an IPv4 or bracketed IPv6 address, a domain:port, user@host, or localhost.
#: (Not every `name:digits`: Bedrock's model ids end in a version, `...-v1:0`.)
_ADDRESS = re.compile(
    r"://|^//|(?:^|[/@])\d{1,3}(?:\.\d{1,3}){3}(?:$|[:/])|\[[0-9a-fA-F:.]*\]"
    r"|(?:^|[/@])[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}:\d{2,5}(?:$|/)|@[\w-]+\.|localhost",
    re.IGNORECASE,
)


def carries_address(model: str) -> bool:
    """True when the model string holds something a provider could take for a URL or a host."""
    return _ADDRESS.search(model) is not None


class ModelPolicy:
    """Decides whether a client may name a model: `check(model, provider)` raises `StreamError` if not."""

    __slots__ = ("_any", "_api_base", "_written")

    def __init__(self, written: tuple[str, ...], allow_any: bool, api_base: str | None) -> None:
        #: What the operator wrote: allowed as written.
        self._written = dict.fromkeys(written)
        self._any = allow_any
        self._api_base = api_base

    @property
    def allowed(self) -> tuple[str, ...]:
        return tuple(self._written)

    def is_written(self, model: str) -> bool:
        return model in self._written

    def check_name(self, model: str) -> None:
        """Before litellm sees it: a model the operator did not write must be allowed by name."""
        if model in self._written:
            return
        if not self._any:
            raise invalid(f"model {model!r} is not offered here; ask for one of: {', '.join(self._written)}")
        if carries_address(model):
            raise invalid(f"model {model!r} names a URL or a host: only the operator chooses where the server connects")

    def check_provider(self, model: str, provider: str) -> None:
        """After litellm resolved it: a self-hosted provider only at the operator's `api_base`."""
        if model not in self._written and provider in SELF_HOSTED and not self._api_base:
            raise invalid(
                f"model {model!r} is served by {provider}, a self-hosted server: name it in the allowed models,"
                " or set the upstream's api_base, to use it"
            )
