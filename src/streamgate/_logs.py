"""Logging set-up: one log record is one line, whatever a client put in the values it carries.

A request id, a model name or an upstream's error text reaches log records; a newline in one
could forge a whole line, and an escape sequence could rewrite the operator's terminal. The
formatter escapes every control character (and the Unicode line separators) in the finished
record, tracebacks included, so a record is always one line of printable text.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ESCAPES: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def one_line(text: str) -> str:
    """`text` with every control character escaped (`\\n`, `\\x1b`, ...): printable, on one line."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """A `logging.Formatter` whose every record is one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def configure(level: str) -> None:
    """Log to standard error at `level`, one line a record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
