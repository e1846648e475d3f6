"""The lean path's chunk reading: the shortcut for a stream's repeated chunk reads what `json.loads` reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamgate.core import StreamError
from streamgate.core.openai_stream import _Chunks, _loads, _parse


def _line(content: Any = " tok", **fields: Any) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        **fields,
    }
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _read(parse: Any, line: bytes) -> object:
    try:
        return parse(line)
    except StreamError as exc:
        return ("error", exc.message)


HEAD, TAIL = _line("\x00").split(b"\\u0000")  # the bytes around the content of every `_line`

#: Lines with the learnt chunk's bytes around their content, each a trap for a shortcut.
TRAPS = [
    _line("plain"),
    _line(""),
    _line("é ü 漢字 🙂"),  # UTF-8 several bytes long
    _line('say "hi"'),  # escaped quotes
    _line("back\\slash"),
    _line("two\nlines\ttab"),  # escaped control characters
    HEAD + b"\\ud800" + TAIL,  # an escaped lone surrogate
    HEAD + b"raw\x01control" + TAIL,  # not JSON: a control character in a string
    HEAD + b"\xff\xfe bad utf-8" + TAIL,  # not UTF-8
    HEAD + b"\xed\xa0\x80" + TAIL,  # a surrogate written in UTF-8: json.loads lets it through
    HEAD + b'x", "y": "' + TAIL,  # another field slipped in: quotes are never a shortcut
    HEAD + b'x"}}], "choices": [], "z": {"a": [{"b": {"c": "' + TAIL,
    HEAD + TAIL,
    HEAD[:-3] + TAIL[3:],  # shorter than the bytes around the text
    _line("other model", model="n"),
    _line(" tok", usage={"prompt_tokens": 3, "completion_tokens": 2}),
    b"data: [DONE]",
    b"",
    b": a comment",
    b'data: {"error": {"message": "overloaded"}}',
]


@pytest.mark.parametrize("line", TRAPS)
def test_the_shortcut_reads_every_line_as_json_loads_does(line: bytes) -> None:
    chunks = _Chunks()
    assert _read(chunks.parse, _line("learnt")) == _read(_parse, _line("learnt"))
    assert chunks._head == HEAD and chunks._tail == TAIL  # learnt: the lines below take the shortcut
    assert _read(chunks.parse, line) == _read(_parse, line)
    assert _read(chunks.parse, _line("again")) == _read(_parse, _line("again"))


DUPLICATES = b'data: {"choices": [{"delta": {"content": "x"}}], "choices": [{"delta": {"content": "y"}}]}'
TWICE = b'data: {"choices": [{"delta": {"content": "x", "content": "y"}}], "x": "y"}'


@pytest.mark.parametrize(
    "lines",
    [
        [_line("m"), _line("x"), _line("m")],  # the text is the model's name too: not only the content
        [_line("a\\b"), _line("ab")],  # written escaped
        [DUPLICATES, DUPLICATES.replace(b'"y"', b'"q"'), DUPLICATES.replace(b'"x"', b'"q"')],  # the last wins
        [TWICE, TWICE.replace(b'"y"', b'"q"', 1), TWICE.replace(b': "y"}', b': "q"}')],
    ],
)
def test_a_chunk_whose_text_is_not_plainly_its_content_is_read_as_json_loads_reads_it(lines: list[bytes]) -> None:
    chunks = _Chunks()
    for line in lines:
        assert _read(chunks.parse, line) == _read(_parse, line)


def test_a_stream_whose_chunks_all_differ_stops_being_learnt() -> None:
    chunks = _Chunks()
    for i in range(_Chunks.LEARN + 3):
        line = _line(f"t{i}", obfuscation="x" * i)  # a provider that pads each chunk differently
        assert chunks.parse(line) == _parse(line)
    assert chunks._tries == 0


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": "\xc3\xa9"}',
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark
        '{"a": "é"}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-16-le"),
        b'{"a": "\xed\xa0\x80"}',
    ],
)
def test_loads_reads_bytes_as_json_loads_does(data: bytes) -> None:
    assert _loads(data) == json.loads(data)


def _error(loads: Any, data: bytes) -> tuple[type, str] | None:
    try:
        loads(data)
    except ValueError as exc:
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("data", [b"{this is not json", b'{"a": "\xff"}', b"\xef\xbb\xbf\xef\xbb\xbf{}"])
def test_loads_refuses_what_json_loads_refuses_as_it_does(data: bytes) -> None:
    assert _error(json.loads, data) is not None
    assert _error(_loads, data) == _error(json.loads, data)
