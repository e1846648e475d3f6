"""Token counts of the lean providers' models with tiktoken, as litellm counts them, without litellm.

Used only when an upstream sends no usage (the final message then says `usage_estimated`).
litellm counts an OpenAI-compatible model's text with tiktoken: o200k_base for the gpt-4o family
and OpenAI's newer releases, the encoding tiktoken names for a model it knows, else cl100k_base
(it counts an unknown name as gpt-3.5-turbo), in chunks of 1,024 characters. It reads the encodings
from the files it bundles (`TIKTOKEN_CACHE_DIR`), so nothing reaches the network; so does this.
A model litellm counts with another tokenizer (Llama, DeepSeek, Claude, Command R on an
OpenAI-compatible server) is litellm's to count: `encoding_for` says None.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING, Final

from . import prices

if TYPE_CHECKING:
    import tiktoken

#: Names litellm counts with a Hugging Face tokenizer of their family, not tiktoken.
_OTHER_TOKENIZER: Final = re.compile(r"llama-[23]|replicate|deepseek|claude|command-r", re.IGNORECASE)
#: OpenAI's releases since gpt-5 and the o-series: o200k_base (litellm's `_VERSIONED_OPENAI_MODEL`).
_VERSIONED: Final = re.compile(r"(?:gpt-(?:[5-9]|[1-9]\d+)|o[1-9]\d*)(?:[.-]|$)")
_CHAT_MODES: Final = frozenset({"chat", "responses"})  # litellm's OPENAI_CHAT_MODES
#: litellm encodes a text in pieces of this many characters (`TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS`).
CHUNK_CHARS: Final = 1024
TOKENIZERS_FOLDER: Final = "litellm_core_utils/tokenizers"


def _tiktoken_name(name: str) -> str | None:
    import tiktoken.model

    try:
        return tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return None


def _suffixed_variant(name: str) -> str | None:
    """The encoding of the longest model tiktoken knows that `name` extends (`gpt-4-0613-x`)."""
    from tiktoken.model import MODEL_TO_ENCODING

    known = [model for model in MODEL_TO_ENCODING if name.startswith(f"{model}-")]
    return MODEL_TO_ENCODING[max(known, key=len)] if known else None


def encoding_for(provider: str, name: str) -> str | None:
    """The tiktoken encoding litellm counts `provider/name` with, or None: litellm's to count."""
    if (
        provider not in prices.PROVIDERS
        or _OTHER_TOKENIZER.search(name)
        or name.startswith("ft:")  # fine-tuned: litellm counts as its base model
        or prices.is_alias(provider, name)
    ):
        return None
    mode = prices.openai_mode(name)  # litellm counts an OpenAI model the way OpenAI does, whoever serves it
    if mode is not None and mode not in _CHAT_MODES:
        return None
    if "gpt-4o" in name:
        return "o200k_base"
    known = _tiktoken_name(name)
    if known in ("o200k_base", "cl100k_base"):
        return known
    if known is not None:  # an older encoding: litellm counts it as gpt-3.5-turbo unless it lists it
        return None
    if mode is not None or _VERSIONED.match(name):  # a release newer than tiktoken's table
        return _suffixed_variant(name) or "o200k_base"
    return "cl100k_base"  # a name litellm does not know: counted as gpt-3.5-turbo


def _bundled_files() -> str | None:
    path = prices.table_path()
    return os.path.join(os.path.dirname(path), TOKENIZERS_FOLDER) if path is not None else None


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding read from litellm's bundled files, as litellm reads it (never downloaded)."""
    # litellm points tiktoken's cache at its bundled files the same way, for the whole process,
    # unless CUSTOM_TIKTOKEN_CACHE_DIR names another folder.
    folder = os.environ.get("CUSTOM_TIKTOKEN_CACHE_DIR") or _bundled_files()
    if folder is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = folder
    import tiktoken

    return tiktoken.get_encoding(name)


def count(encoding_name: str, text: str) -> int:
    """The tokens of `text` in `encoding_name`, counted in litellm's pieces."""
    codec = encoding(encoding_name)
    return sum(len(codec.encode_ordinary(text[i : i + CHUNK_CHARS])) for i in range(0, len(text), CHUNK_CHARS))
