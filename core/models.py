"""The model list: the names clients may ask for, and where each one goes.

An operator who serves more than one model writes them in a file (`streamgate serve --config FILE`),
YAML or TOML, one entry per name a client may ask for:

    default: assistant               # the model of a request that names none (else the first)
    models:
      assistant:
        model: streamgate/default    # a litellm model string
      llama:
        model: openai/llama-3.1-8b   # an OpenAI-compatible server
        api_base: http://10.0.0.7:8000/v1
        api_key_env: LLAMA_API_KEY   # the key's environment variable; a key is never written here
        max_concurrent_streams: 50   # streams of this model open at once (default: no limit of its own)
        fallbacks: [assistant]       # tried in order when it fails before its first token
    budgets:                         # spend limits by API key holder (streamgate.core.budgets)
      alice: {per_day: 5.00}
      ci-bot: {per_month: 200}

A name is an alias: the client sees it (in `/v1/models`, in each stream's final frame and in the
metrics), never the model string, its address or its key. Each entry's `api_base` and key go to that
entry's upstream only. A file that names a key in clear, a variable that is not set, an unknown
setting or a fallback that is not in the list is refused at start-up, with the entry named.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budgets import Budget

#: Settings an entry may have; anything else is a typo, refused.
_ENTRY_KEYS = frozenset({"model", "api_base", "api_key_env", "max_concurrent_streams", "fallbacks"})
_FILE_KEYS = frozenset({"default", "models", "budgets"})
#: Names clients send in JSON and URLs (`/v1/models/{name}`): printable, no spaces, bounded.
_MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One model clients may name: an alias for a litellm model string, with its own upstream."""

    #: What clients ask for (and see).
    name: str
    #: The litellm model string it stands for: "openai/gpt-4o-mini", "streamgate/default", ...
    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    #: Streams of this model open at once (0: only the server's limit applies).
    max_concurrent_streams: int = 0
    #: Names of other routes tried in order when this one fails before its first token.
    fallbacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = self.name
        if not name or len(name) > _MAX_NAME or not (name.isascii() and name.isprintable()) or " " in name:
            raise ValueError(f"model name {name!r} must be 1-{_MAX_NAME} printable ASCII characters without spaces")
        if not self.model.strip():
            raise ValueError(f"model {self.name!r}: 'model' (a litellm model string) must not be empty")
        if self.max_concurrent_streams < 0:
            raise ValueError(f"model {self.name!r}: max_concurrent_streams must not be negative")


@dataclass(frozen=True, slots=True)
class ModelList:
    """What a config file says: its models (the default first) and the keys' budgets."""

    routes: tuple[ModelRoute, ...]
    budgets: tuple[Budget, ...] = ()

    @property
    def default(self) -> str | None:
        return self.routes[0].name if self.routes else None


def load_model_list(path: str | Path, environ: Mapping[str, str] | None = None) -> ModelList:
    """Read a config file (YAML, or TOML by its `.toml` suffix); raises ValueError naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the config file {str(path)!r}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            import yaml  # type: ignore[import-untyped]  # (no stubs in the lock; one call: safe_load)

            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers' own errors say where
        kind = "TOML" if path.suffix == ".toml" else "YAML"
        raise ValueError(f"config file {str(path)!r} is not valid {kind}: {exc}") from None
    return parse_model_list(data, os.environ if environ is None else environ, source=str(path))


def parse_model_list(data: Any, environ: Mapping[str, str], source: str = "the config") -> ModelList:
    """The model list of a parsed config document; raises ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with 'models', got {type(data).__name__}")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}")
    budgets = _budgets(data.get("budgets", {}), source)
    entries = data.get("models", {} if budgets else None)
    if not isinstance(entries, dict) or not (entries or budgets):
        raise ValueError(f"{source}: 'models' must map each model name to its settings, and name at least one")
    routes = [_route(str(name), spec, environ, source) for name, spec in entries.items()]
    names = [route.name for route in routes]
    for route in routes:
        for fallback in route.fallbacks:
            if fallback not in names or fallback == route.name:
                raise ValueError(
                    f"{source}: model {route.name!r} falls back to {fallback!r}, which is not another model of the list"
                )
    default = data.get("default")
    if default is not None:
        if default not in names:
            raise ValueError(f"{source}: the default model {default!r} is not in 'models'")
        routes.sort(key=lambda route: route.name != default)  # stable: the default first, the rest in order
    return ModelList(tuple(routes), budgets)


def _budgets(entries: Any, source: str) -> tuple[Budget, ...]:
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: 'budgets' must map each key holder to per_day or per_month (US dollars)")
    budgets = []
    for holder, spec in entries.items():
        where = f"{source}: the budget of {holder!r}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("per_day", "per_month"):
            raise ValueError(f"{where}: give one of per_day or per_month, in US dollars")
        (period, limit), *_ = spec.items()
        if not isinstance(limit, int | float) or isinstance(limit, bool):
            raise ValueError(f"{where}: {period} must be a number of US dollars")
        budgets.append(Budget(str(holder), float(limit), "day" if period == "per_day" else "month"))
    return tuple(budgets)


def _route(name: str, spec: Any, environ: Mapping[str, str], source: str) -> ModelRoute:
    where = f"{source}: model {name!r}"
    if isinstance(spec, str):  # `name: provider/model`, the short form
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected its settings (model, api_base, api_key_env, ...)")
    if "api_key" in spec:
        raise ValueError(f"{where}: a key is never written in the file; name its environment variable in api_key_env")
    unknown = set(spec) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}")
    model = spec.get("model")
    if not isinstance(model, str):
        raise ValueError(f"{where}: 'model' must be a litellm model string, e.g. openai/gpt-4o-mini")
    api_base = spec.get("api_base")
    if api_base is not None and not (isinstance(api_base, str) and api_base.startswith(("http://", "https://"))):
        raise ValueError(f"{where}: api_base must be an http:// or https:// URL")
    api_key = None
    variable = spec.get("api_key_env")
    if variable is not None:
        if not isinstance(variable, str) or not variable:
            raise ValueError(f"{where}: api_key_env must name an environment variable")
        api_key = environ.get(variable)
        if not api_key:
            raise ValueError(f"{where}: its key's environment variable {variable} is not set")
    limit = spec.get("max_concurrent_streams", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0 or not math.isfinite(limit):
        raise ValueError(f"{where}: max_concurrent_streams must be a whole number, 0 or more")
    fallbacks = spec.get("fallbacks", ())
    if isinstance(fallbacks, str):
        fallbacks = (fallbacks,)
    if not isinstance(fallbacks, list | tuple) or not all(isinstance(f, str) for f in fallbacks):
        raise ValueError(f"{where}: fallbacks must be a list of model names")
    return ModelRoute(name, model, api_base, api_key, limit, tuple(fallbacks))
