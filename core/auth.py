"""API keys: who may stream, and how many streams each key may hold open.

Keys come from a file (`name: key` or `key` per line, `#` comments) or a
comma-separated list (the `STREAMGATE_API_KEYS` variable). A key is compared
in constant time against every configured key, and is never logged: logs name
the key's holder (its `name`, or `key-N`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streamgate.contract import ErrorCode, StreamError

MISSING = "missing credentials: send 'Authorization: Bearer <API key>'"
WRONG = "invalid API key"


@dataclass(frozen=True, slots=True)
class Keyring:
    """Configured keys by holder name. Empty: authentication is off."""

    keys: tuple[tuple[str, bytes], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Keyring:
        keys: list[tuple[str, bytes]] = []
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, key = line.partition(":")
            if not sep:
                name, key = f"key-{len(keys) + 1}", line
            name, key = name.strip(), key.strip()
            if len(key) < 8:
                raise ValueError(f"API key on line {number} is shorter than 8 characters")
            keys.append((name, key.encode()))
        return cls(tuple(keys))

    @classmethod
    def from_file(cls, path: str | Path) -> Keyring:
        return cls.from_lines(Path(path).read_text().splitlines())

    @classmethod
    def from_list(cls, text: str) -> Keyring:
        return cls.from_lines(part for part in text.split(","))

    def authenticate(self, authorization: str | None) -> str | None:
        """The holder of the key in an `Authorization: Bearer` value; raises UNAUTHENTICATED.

        Returns None when authentication is off.
        """
        if not self.keys:
            return None
        if not authorization:
            raise StreamError(ErrorCode.UNAUTHENTICATED, MISSING)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise StreamError(ErrorCode.UNAUTHENTICATED, MISSING)
        presented = token.strip().encode()
        holder = None
        for name, key in self.keys:  # compare with every key: the time does not tell which one matched
            if hmac.compare_digest(presented, key):
                holder = name
        if holder is None:
            raise StreamError(ErrorCode.UNAUTHENTICATED, WRONG)
        return holder
