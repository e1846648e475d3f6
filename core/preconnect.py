"""A spare upstream connection: a stream that starts finds one already open.

A stream that needs a new connection pays a connect (to a hosted provider, a TLS handshake too)
before its first token; while streams arrive faster than old ones end (a rising load), every one
of them would. So, as Envoy's preconnect does, when a request of the lean path takes the last idle
connection to its upstream (or has to open one), one more is opened in the background and left
idle in aiohttp's pool, where the next request takes it. An idle spare expires from the pool as any
idle connection does (15 s), and at most one is being opened per upstream at a time.

The trigger is aiohttp's request tracing (`on_connection_create_end`, `on_connection_reuseconn`:
the moment a request got its connection); the spare is opened with the connector's documented
`connect()` and `Connection.release()`. Counting the idle connections reads aiohttp's
`BaseConnector._conns`, its only record of them (guarded: without it, no spare is opened).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sized
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from yarl import URL  # aiohttp's URL type

logger = logging.getLogger("streamgate.core")

#: Seconds a spare connection may take to open, name lookup and TLS handshake included.
CONNECT_S = 10.0


class Preconnect:
    """Pass `trace` to the session; `attach(session)` then keeps a spare connection to each upstream."""

    def __init__(self) -> None:
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._request_start)
        self.trace.on_connection_create_end.append(self._connection_taken)
        self.trace.on_connection_reuseconn.append(self._connection_taken)
        self._session: aiohttp.ClientSession | None = None
        #: Spares being opened, by connection key.
        self._opening: set[object] = set()
        #: A request to each upstream's origin: what the connector needs to open a connection there.
        self._requests: dict[str, aiohttp.ClientRequest] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def _request_start(
        self, session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        context.preconnect_url = params.url  # the connection signals that follow carry no URL

    async def _connection_taken(self, session: aiohttp.ClientSession, context: SimpleNamespace, params: Any) -> None:
        # Called inside the stream's own request: an error here would fail the stream, for a mere
        # optimisation. So none gets out.
        try:
            self._after_taken(session, getattr(context, "preconnect_url", None))
        except Exception:
            logger.exception("preconnect: cannot tell whether a spare connection is needed")

    def _after_taken(self, session: aiohttp.ClientSession, url: URL | None) -> None:
        if url is None or session is not self._session or session.closed:
            return
        origin = str(url.origin())
        request = self._requests.get(origin)
        if request is None:
            if len(self._requests) >= 1000:  # upstreams come from the configuration: a handful
                return
            request = aiohttp.ClientRequest("POST", url.origin(), loop=asyncio.get_running_loop())
            self._requests[origin] = request
        key = request.connection_key
        if key in self._opening or self._idle(session, key) != 0:
            return
        self._opening.add(key)
        task = asyncio.get_running_loop().create_task(self._open(session, request, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _idle(session: aiohttp.ClientSession, key: object) -> int | None:
        conns = getattr(session.connector, "_conns", None)
        if not isinstance(conns, dict):
            return None
        waiting = conns.get(key)
        return len(waiting) if isinstance(waiting, Sized) else 0

    async def _open(self, session: aiohttp.ClientSession, request: aiohttp.ClientRequest, key: object) -> None:
        try:
            if session.connector is not None:
                # The pool is empty (checked just now), so this opens a new connection. Bounded as a
                # whole (name lookup included): a stuck one would hold back every later spare.
                async with asyncio.timeout(CONNECT_S):
                    connection = await session.connector.connect(request, [], session.timeout)
                connection.release()  # into the pool, idle, for the next request
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            logger.debug("could not open a spare connection to %s: %s", request.url, exc)
        except Exception:  # a bug here must not go unseen, nor reach the streams
            logger.exception("opening a spare connection to %s failed", request.url)
        finally:
            self._opening.discard(key)

    async def settle(self) -> None:
        """Until the spares being opened are open, in the pool (or failed)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop opening spares (before the session closes)."""
        self._session = None  # first: a request that gets its connection meanwhile starts none
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
