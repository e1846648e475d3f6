"""The page at `/`, in real headless Chromium (Debian's): a person types a prompt and watches it stream."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_page_streams_an_answer_and_shows_the_metrics(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=12, delay=0.05)
    expected = "".join(token(i) for i in range(12))
    await page.goto(bridge.url + "/")
    await page.fill("#prompt", "Tell me about streaming")
    await page.click(f"label:has(input[value={transport}])")
    assert await page.is_checked(f"input[name=transport][value={transport}]")

    await page.click("#send")
    await page.wait_for_function("document.getElementById('output').textContent.length > 0", timeout=5000)
    partial = await page.text_content("#output")
    await page.wait_for_selector("body[data-state=done]", timeout=10000)

    assert partial is not None and len(partial) < len(expected), "the answer grows while it streams"
    assert await page.text_content("#output") == expected
    assert (await page.text_content("#m-ttft") or "").endswith(" ms")
    assert await page.text_content("#m-tokens") == f"{len(['Tell', 'me', 'about', 'streaming'])} + 12"
    assert await page.text_content("#m-cost") == "unknown"
    assert await page.text_content("#m-model") == "openai/fake"
    assert await page.text_content("#m-finish") == "stop"
    assert await page.text_content("#error") == ""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"page-{transport}.png"), full_page=True)


async def test_the_page_shows_a_failed_stream(bridge: BridgeServer, upstream: FakeUpstream, page: Page) -> None:
    upstream.default = Scenario(tokens=10, drop_after=3)
    await page.goto(bridge.url + "/")

    await page.click("#send")
    await page.wait_for_selector("body[data-state=failed]", timeout=10000)

    assert await page.text_content("#output") == "".join(token(i) for i in range(3))
    assert await page.text_content("#error")
    assert await page.text_content("#m-finish") == "UNAVAILABLE"


async def test_the_page_survives_a_dropped_connection_and_finishes_the_answer(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page
) -> None:
    from tests.browser.test_eventsource import CuttingProxy

    upstream.default = Scenario(tokens=40, delay=0.03)
    expected = "".join(token(i) for i in range(40))
    proxy = CuttingProxy(bridge.port, cut_after_events=8)
    await proxy.start()
    try:
        await page.goto(f"http://127.0.0.1:{proxy.port}/")
        await page.fill("#prompt", "Tell me about streaming")
        await page.click("label:has(input[value=sse])")
        await page.click("#send")
        await page.wait_for_function(
            "(expected) => document.querySelector('#output').textContent === expected", arg=expected, timeout=15_000
        )
    finally:
        await proxy.close()
    assert proxy.cuts == 1
    assert upstream.counters.started == 1, "the answer was finished, not asked again"
