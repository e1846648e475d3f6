"""The page at `/`, in real headless Chromium (Debian's): a person asks and watches the answer stream,
over each transport, with its metrics under it; a failed stream says why; SSE survives a dropped connection."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.browser.pagekit import TRANSPORTS, ask, last_answer, last_error, metrics, open_page, screenshot, settled
from tests.browser.test_eventsource import CuttingProxy


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_page_streams_an_answer_and_shows_the_metrics(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=12, delay=0.05)
    expected = "".join(token(i) for i in range(12))
    await open_page(page, bridge.url)
    await ask(page, "Tell me about streaming", transport)

    await page.wait_for_function(
        "() => document.querySelector('.msg.assistant .text').textContent.length > 0", timeout=5000
    )
    partial = await last_answer(page)
    await settled(page)

    assert 0 < len(partial) < len(expected), "the answer grows while it streams"
    assert await last_answer(page) == expected
    shown = await metrics(page)
    assert re.fullmatch(r"first token \d+ ms", shown["ttft"]), shown
    assert re.fullmatch(r"\d+\.\d tokens/s", shown["tps"]), shown
    assert shown["tokens"] == "tokens 4 in / 12 out"  # "Tell me about streaming": the fake upstream counts words
    assert shown["cost"] == "cost unknown"  # litellm's price table does not know openai/fake: unknown is not free
    assert shown["model"] == "openai/fake"
    assert shown["finish"] == "stop"
    assert await last_error(page) == ""
    await screenshot(page, f"page-{transport}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_page_shows_a_failed_stream_in_words(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)
    await open_page(page, bridge.url)
    await ask(page, "Tell me about streaming", transport)
    await settled(page, "failed")

    assert await last_answer(page) == "".join(token(i) for i in range(3)), "the partial answer stays"
    error = await last_error(page)
    assert len(error) > 10 and not error.startswith("the gateway answered"), f"the error's own message: {error!r}"
    if transport != "openai":  # the final frame's code; /v1's error object has OpenAI's fields instead
        assert (await metrics(page))["finish"] == "UNAVAILABLE"
    await screenshot(page, f"page-failed-{transport}")


async def test_the_page_survives_a_dropped_connection_and_finishes_the_answer(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page
) -> None:
    upstream.default = Scenario(tokens=40, delay=0.03)
    expected = "".join(token(i) for i in range(40))
    proxy = CuttingProxy(bridge.port, cut_after_events=8, marker=b"POST /query/stream ")
    await proxy.start()
    try:
        await open_page(page, f"http://127.0.0.1:{proxy.port}")
        await ask(page, "Tell me about streaming", "sse")
        await settled(page, timeout=15_000)
    finally:
        await proxy.close()

    assert proxy.cuts == 1, "the connection was dropped mid-answer"
    assert await last_answer(page) == expected, "resumed from Last-Event-ID: nothing lost, nothing twice"
    assert (await metrics(page))["tokens"] == "tokens 4 in / 40 out", "the final frame came after the resume"
    assert upstream.counters.started == 1, "the answer was finished, not asked again"
