"""In Chromium: an `EventSource` that does not close itself on the final frame generates once.

Regression: it reconnected every ~3 s and each reconnect generated the same answer again (frames
had no `id:`, so nothing told a reconnect from a new request).
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Page

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario


async def test_an_eventsource_left_open_after_the_final_frame_does_not_generate_again(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page
) -> None:
    upstream.default = Scenario(tokens=5, delay=0.02)
    await page.goto(bridge.url + "/healthz")
    # The documentation's client closes on is_final; this one, like many, does not.
    await page.evaluate(
        """() => {
            window.finals = 0; window.opens = 0; window.errors = 0;
            const source = new EventSource('/query/stream?query=hello');
            window.source = source;
            source.onopen = () => { window.opens += 1; };
            source.onerror = () => { window.errors += 1; };
            source.onmessage = (event) => { if (JSON.parse(event.data).is_final) window.finals += 1; };
        }"""
    )
    await asyncio.sleep(4.0)  # a retry: line says 1 s: several reconnects' worth

    state = await page.evaluate("() => [window.finals, window.opens, window.source.readyState]")
    finals, _, ready = state
    assert finals == 1, state
    assert upstream.counters.started == 1, "one generation, however many reconnects"
    assert ready == 2, "the 204 closed the EventSource (readyState CLOSED)"
