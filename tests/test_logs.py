"""One log record is one line: a value from a client cannot forge a line or reach the terminal raw.

Regression: a request id with "\\n" and ANSI escapes reached the log as it was, forged a whole
`ERROR ... completed` line and cleared the operator's screen.
"""

from __future__ import annotations

import io
import logging

from streamgate._logs import FORMAT, OneLineFormatter, one_line


def _log(message: str, *args: object, exc: BaseException | None = None) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logger = logging.getLogger("streamgate.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        if exc is None:
            logger.warning(message, *args)
        else:
            try:
                raise exc
            except BaseException:
                logger.exception(message, *args)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_forged_line_and_escape_sequences_stay_in_one_escaped_line() -> None:
    forged = "abc\n2026-11-29 12:00:00 ERROR streamgate.core: stream x completed\r\x1b[2J\x1b]0;pwned\x07\u2028"

    written = _log("stream %s refused: %s", forged, "model\x85")

    assert written.count("\n") == 1 and written.endswith("\n")
    assert "\x1b" not in written and "\r" not in written and "\x07" not in written and "\u2028" not in written
    assert "abc\\n2026-11-29 12:00:00 ERROR" in written
    assert "\\x1b[2J" in written and "\\x85" in written


def test_a_traceback_is_part_of_its_records_one_line() -> None:
    written = _log("stream %s: internal error", "id-1", exc=ValueError("bad\nvalue"))

    assert written.count("\n") == 1
    assert "Traceback (most recent call last):\\n" in written and "ValueError: bad\\nvalue" in written


def test_printable_text_is_left_as_it_is() -> None:
    text = 'stream 4f2a completed: model=openai/gpt-4o tokens=12+40 cost=0.0001 "quoted" ünïcode 中文'
    assert one_line(text) == text


def test_litellms_own_records_go_through_the_one_line_formatter() -> None:
    # The probe: litellm's own stderr handler wrote an upstream's text raw (a forged line, BEL, NUL).
    from streamgate.core import LiteLLMConfig
    from streamgate.core.provider import LITELLM_LOGGERS, LiteLLMProvider

    LiteLLMProvider(LiteLLMConfig())
    assert all(not logging.getLogger(name).handlers for name in LITELLM_LOGGERS)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("LiteLLM").warning("finish_reason: line1\nFORGED ERROR admin\x07\x00")
    finally:
        logging.getLogger().removeHandler(handler)
    assert out.getvalue().count("\n") == 1 and "\\nFORGED" in out.getvalue() and "\x07" not in out.getvalue()
