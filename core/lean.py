"""Model strings resolved without litellm: the embedded model and the lean (OpenAI-compatible) providers.

`LiteLLMProvider` resolves a model string to (name at the upstream, provider, key, base URL) with
`resolve` first and asks `litellm.get_llm_provider` only when it says None, so a core that serves
only these models never imports litellm (about 4 s and 220 MiB). The answers are litellm's own
(`tests/core/test_lean.py` compares them): the name after the prefix; for `hosted_vllm`, the key
and base URL litellm reads from its environment variables. Anything else (another prefix, a bare
name litellm maps with its tables, a name litellm's table makes an alias of another, litellm's
proxy mode) is litellm's to resolve.
"""

from __future__ import annotations

import os
from typing import Final

from . import embedded, prices

Resolved = tuple[str, str, str | None, str | None]

#: litellm's proxy mode sends every model to a LiteLLM proxy: litellm decides then.
_PROXY_MODE: Final = "USE_LITELLM_PROXY"


def resolve(model: str) -> Resolved | None:
    """litellm's answer for `model` when it is the embedded model or a lean provider's, else None."""
    provider, slash, name = model.partition("/")
    if not slash or not name:
        return None
    if provider == embedded.PROVIDER:
        return name, provider, None, None
    if provider not in prices.PROVIDERS or os.environ.get(_PROXY_MODE) or not prices.local_table():
        return None
    if prices.is_alias(provider, name):
        return None  # litellm resolves it to the name it stands for
    if provider == "hosted_vllm":
        base = os.environ.get("HOSTED_VLLM_API_BASE") or None
        return name, provider, os.environ.get("HOSTED_VLLM_API_KEY") or "fake-api-key", base
    return name, provider, None, None
