"""Pure framing: the fast encoders give exactly what the general ones give."""

from __future__ import annotations

import json

import pytest

from streamgate.bridges import framing

CONTENTS = ["Hello", " world", "", 'quote " and \\ backslash', "line\nbreak\r\n", "émoji 🎉 ü", "\x00\x1f", "</script>"]


@pytest.mark.parametrize("content", CONTENTS)
def test_the_chunk_frame_matches_the_general_encoder(content: str) -> None:
    assert framing.sse_chunk(content) == framing.sse_event({"content": content, "metadata": {}, "is_final": False})
    assert framing.ws_chunk(content) == json.dumps({"type": "chunk", "content": content}, ensure_ascii=False)


@pytest.mark.parametrize("content", CONTENTS)
def test_a_frame_is_one_data_line_whatever_the_content(content: str) -> None:
    frame = framing.sse_chunk(content)
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2, "a newline in the content must not split the data line"
    assert json.loads(frame[6:])["content"] == content
