"""Logging set-up: one log record is one line, whatever a client put in the values it carries.

A request id, a model name or an upstream's error text reaches log records; a newline in one
could forge a whole line, and an escape sequence could rewrite the operator's terminal. The
formatter escapes every control character (and the Unicode line separators) in the finished
record, tracebacks included, so a record is always one line of printable text.

`--log-format json` writes each record as one JSON object a line instead (`JsonFormatter`): `time`
(UTC, ISO 8601), `level`, `logger`, `message`, and the fields the code passed with `extra=` (a
stream's last line: request_id, key_holder, model, transport, outcome, tokens, cost, ttft_ms,
duration_ms, ...; the bridge's access line: method, path, status, bytes, duration_ms, ...), and
`exception` for a traceback. JSON escapes control characters, and non-ASCII text is written as
`\\uXXXX` escapes, so that no value can end a line either. No field ever holds an API key or the link
token: the code logs a key's holder, never the key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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


#: What every `LogRecord` has: anything else on a record came with `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
FORMATS = ("text", "json")


def _value(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object a record, on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in entry:
                entry[name] = _value(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Log to standard error at `level`, one line a record: text, or JSON (`log_format="json"`)."""
    if log_format not in FORMATS:
        raise ValueError(f"the log format must be text or json, got {log_format[:20]!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
