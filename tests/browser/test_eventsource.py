"""In Chromium: an `EventSource` that does not close itself on the final frame generates once.

Regression: it reconnected every ~3 s and each reconnect generated the same answer again (frames
had no `id:`, so nothing told a reconnect from a new request).
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Page

from streamgate.bridges.app import BridgeServer
from streamgate.testing.upstream import FakeUpstream, Scenario, token


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


class CuttingProxy:
    """A TCP proxy in front of the bridge that drops the first stream's connection mid-answer,
    as a phone changing networks would; later connections pass whole."""

    def __init__(self, target_port: int, cut_after_events: int, marker: bytes = b"GET /query/stream?") -> None:
        self.target_port = target_port
        self.cut_after_events = cut_after_events
        #: What a request to cut starts with (its request line).
        self.marker = marker
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        bridge_r, bridge_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        cut = asyncio.Event()  # set when this connection carries the first stream (it may be kept alive)

        async def up() -> None:
            while data := await client_r.read(65536):
                if self.marker in data and self.cuts == 0:
                    self.cuts += 1
                    cut.set()
                bridge_w.write(data)
            bridge_w.close()

        async def down() -> None:
            events = 0
            while data := await bridge_r.read(65536):
                client_w.write(data)
                if cut.is_set():
                    events += data.count(b"\n\n")
                    if events > self.cut_after_events:
                        break
            client_w.close()
            bridge_w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)


async def test_an_eventsource_whose_connection_drops_mid_answer_finishes_the_same_answer(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page
) -> None:
    upstream.default = Scenario(tokens=40, delay=0.03)
    proxy = CuttingProxy(bridge.port, cut_after_events=8)
    await proxy.start()
    try:
        await page.goto(f"http://127.0.0.1:{proxy.port}/healthz")
        await page.evaluate(
            """() => {
                window.text = ''; window.final = null; window.errors = 0;
                const source = new EventSource('/query/stream?query=hello&resumable=1');
                source.onerror = () => { window.errors += 1; };
                source.onmessage = (event) => {
                    const frame = JSON.parse(event.data);
                    if (frame.is_final) { window.final = frame; source.close(); } else { window.text += frame.content; }
                };
            }"""
        )
        await page.wait_for_function("() => window.final !== null", timeout=15_000)
        text, final, errors = await page.evaluate("() => [window.text, window.final, window.errors]")
    finally:
        await proxy.close()

    assert proxy.cuts == 1 and errors >= 1, "the connection was dropped mid-answer and EventSource reconnected"
    assert text == final["metadata"]["final_response"] == "".join(token(i) for i in range(40))
    assert upstream.counters.started == 1, "no second upstream request"
