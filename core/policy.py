"""Which models a client may name: the operator decides what the server may reach.

A litellm model string is more than a name: some providers take the upstream's URL from it
(`oobabooga/http://10.0.0.5/...`, `huggingface/https://...`), some connect to a server on this
machine unless told otherwise (`ollama/x` is localhost:11434, `langflow/x` localhost:7860, and
`sagemaker/x` asks the cloud's metadata address for credentials), and litellm's side lookups do not
always honour `api_base`. A client that may name any model string may therefore make the core
connect anywhere (SSRF), send the operator's upstream key there, or pick a provider path that costs
many times more CPU per stream. So:

- By default a client may name only the models the operator wrote: `model`, `fallback_models`
  and `allowed_models`. Those are taken as written, URLs included.
- `allow_any_model` (an explicit choice) opens other models of a vetted list of hosted providers
  (fixed public endpoints: OpenAI, Anthropic, Gemini, Mistral, ...), and of the default model's own
  provider (which goes to the operator's `api_base`, with its key); never a model string that
  carries a URL or a host. A list of what is allowed, not of what is not: a provider litellm adds
  tomorrow is refused until it is vetted.

The operator's `api_base` and key belong to the default model's provider: they go with that
provider's models only, never to another provider (`LiteLLMProvider._kwargs`).
"""

from __future__ import annotations

import re

from streamgate.contract import model_not_found

#: Providers whose endpoint is a fixed public HTTPS API (unless the operator's environment says
#: otherwise): a client may name their models with `allow_any_model`.
HOSTED = frozenset(
    {
        "anthropic",
        "cerebras",
        "cohere",
        "cohere_chat",
        "deepinfra",
        "deepseek",
        "fireworks_ai",
        "gemini",
        "groq",
        "mistral",
        "openai",
        "openrouter",
        "perplexity",
        "together_ai",
        "xai",
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
    """Decides whether a client may name a model: `check_name` then `check_provider` raise `StreamError` if not."""

    __slots__ = ("_any", "_home", "_written")

    def __init__(self, written: tuple[str, ...], allow_any: bool, home_provider: str | None) -> None:
        #: What the operator wrote: allowed as written.
        self._written = dict.fromkeys(written)
        self._any = allow_any
        #: The default model's provider: its models go to the operator's api_base.
        self._home = home_provider

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
            raise model_not_found(f"model {model!r} is not offered here; ask for one of: {', '.join(self._written)}")
        if carries_address(model):
            raise model_not_found(
                f"model {model!r} names a URL or a host: only the operator chooses where the server connects"
            )

    def check_provider(self, model: str, provider: str) -> None:
        """After it is resolved (by litellm, or `lean` for the providers it knows): a vetted hosted
        provider, or the default model's own."""
        if model in self._written or provider in HOSTED or provider == self._home:
            return
        raise model_not_found(
            f"model {model!r} is served by {provider}, which is not a hosted API this server may reach for a"
            " client: the operator names it in the allowed models to open it"
        )
