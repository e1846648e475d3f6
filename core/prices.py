"""Prices of the lean providers' models, from litellm's own price table, without importing litellm.

litellm ships its price table as a JSON file in its package, and with `LITELLM_LOCAL_MODEL_COST_MAP`
(or `LITELLM_OFFLINE_MODE`) set it prices every call with exactly that file. Importing litellm to
read it costs about 4 s and 220 MiB; the file is found here with `importlib.util.find_spec`, which
does not import the package, and read once. Only the rows of the lean providers (`PROVIDERS`) are
kept, as flat rates: a few hundred small tuples, not the 3 MiB dict.

A row whose price is not one flat rate a token (tiers above so many tokens, prices by the second
or the image), and a name that is an alias of another row, are litellm's to price: `lookup` says
so (`Price.flat_below` 0, or `ASK_LITELLM`), and the provider asks litellm for those alone.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Final

from streamgate.contract import Usage

#: The providers priced here: those the lean path streams (`LiteLLMProvider`).
PROVIDERS: Final = frozenset({"openai", "hosted_vllm"})
_PREFIXES: Final = tuple(f"{provider}/" for provider in PROVIDERS)
TABLE_FILE: Final = "model_prices_and_context_window_backup.json"
#: The rates of a token; any other key naming a price makes a row litellm's to price.
_FLAT_KEYS: Final = frozenset({"input_cost_per_token", "output_cost_per_token"})
#: A tier: `input_cost_per_token_above_272k_tokens` applies above 272,000 tokens.
_TIER: Final = re.compile(r"_above_(\d+)k_tokens")
#: Keys that name a price without changing the price of a chat call's tokens (other modes, cached
#: tokens, other service tiers and batches, which this gateway never requests).
_IGNORED: Final = re.compile(r"cache|_batches|_flex|_priority|search_context|fedramp|ultrafast|_audio|_image")


@dataclass(frozen=True, slots=True)
class Price:
    """A model's flat rates in US dollars a token, which hold below `flat_below` tokens in all."""

    input: float
    output: float
    #: Prompt and completion tokens together below which these rates are litellm's answer; at or
    #: above it (a row with tiers, or 0: a row that is not flat at all), litellm computes the price.
    flat_below: int | None = None

    def cost(self, usage: Usage) -> float | None:
        """The cost of `usage`, or None when litellm must compute it (`flat_below`)."""
        if self.flat_below is not None and usage.prompt_tokens + usage.completion_tokens >= self.flat_below:
            return None
        return self.input * usage.prompt_tokens + self.output * usage.completion_tokens


#: `lookup`'s answer for a model litellm must price (or resolve) itself.
ASK_LITELLM: Final = Price(0.0, 0.0, 0)


def local_table() -> bool:
    """Whether litellm prices with its bundled table (else it fetches one at import, and decides)."""
    return (
        os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "").lower() == "true"
        or os.environ.get("LITELLM_OFFLINE_MODE", "").strip().lower() == "true"
    )


def table_path() -> str | None:
    """litellm's bundled price table, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, TABLE_FILE)
        if os.path.exists(path):
            return path
    return None


@dataclass(frozen=True, slots=True)
class _Book:
    #: The lean providers' rows by key: their price, or `ASK_LITELLM`.
    rows: dict[str, tuple[str, Price]]
    #: Every name that is an alias of another row (litellm resolves and prices those).
    aliases: frozenset[str]
    #: OpenAI's models by name, without the provider: their mode ("chat", "realtime", ...).
    openai_modes: dict[str, str]


def _row_price(row: dict[str, Any]) -> Price:
    input_rate, output_rate = row.get("input_cost_per_token"), row.get("output_cost_per_token")
    if not isinstance(input_rate, int | float) or not isinstance(output_rate, int | float):
        return ASK_LITELLM
    tiers: list[int] = []
    for key in row:
        if "cost" not in key or key in _FLAT_KEYS or _IGNORED.search(key):
            continue
        tier = _TIER.search(key)
        if tier is None or not key.startswith(("input_cost_per_token", "output_cost_per_token")):
            return ASK_LITELLM  # priced by the second, the character, the request...
        tiers.append(int(tier.group(1)) * 1000)
    return Price(float(input_rate), float(output_rate), min(tiers) if tiers else None)


@functools.cache
def _book() -> _Book:
    path = table_path()
    if path is None:
        return _Book({}, frozenset(), {})
    with open(path, "rb") as file:
        table: dict[str, Any] = json.load(file)
    rows: dict[str, tuple[str, Price]] = {}
    aliases: set[str] = set()
    modes: dict[str, str] = {}
    for key, row in table.items():
        if not isinstance(row, dict):
            continue
        if "alias_of" in row:
            aliases.add(key)
            continue
        names = row.get("aliases")
        if isinstance(names, list):
            aliases.update(name for name in names if isinstance(name, str))
        provider = row.get("litellm_provider")
        if provider in PROVIDERS:
            rows[key] = (provider, _row_price(row))
            if provider == "openai":
                modes[key.removeprefix("openai/")] = str(row.get("mode"))
        elif key.startswith(_PREFIXES):  # another provider's row under a lean prefix: no price for ours
            rows[key] = (str(provider), ASK_LITELLM)
    del table  # the whole table goes now: only the rows above stay
    return _Book(rows, frozenset(aliases), modes)


def is_alias(provider: str, name: str) -> bool:
    """Whether litellm's table makes `provider/name` an alias (litellm resolves it to another name)."""
    aliases = _book().aliases
    return f"{provider}/{name}" in aliases or name in aliases


def openai_mode(name: str) -> str | None:
    """The mode of OpenAI's model `name` in litellm's table ("chat", "realtime", ...), None if unlisted."""
    return _book().openai_modes.get(name)


def lookup(provider: str, name: str) -> Price | None:
    """The price litellm gives `provider/name` (a lean provider's model string as written): its
    rates, None when litellm has no price for it, or `ASK_LITELLM`."""
    if provider not in PROVIDERS or not local_table() or is_alias(provider, name):
        return ASK_LITELLM
    rows = _book().rows
    # litellm's order: the key with the provider, then the name alone; a row of another provider
    # does not price this one's model (`hosted_vllm/gpt-4o` has no price).
    found = rows.get(f"{provider}/{name}") or rows.get(name)
    if found is None or found[0] != provider:
        return None
    return found[1]
