"""A bridge's link to several cores (`streamgate serve --workers N`): one `CoreClient` each.

New streams go to the cores in turn (round robin: the cores are alike and so, on average, are their
streams; the limits are the server's, counted over every core, so where a stream runs never changes
whether it is admitted); or, with `spread=False`, all to the first core while it takes them: what
`streamgate serve --workers N` gives each of its N bridges (bridge i's first core is core i, and the
kernel spreads the connections over the bridges), so that each link carries a whole bridge's streams
and batches them as one core's link does, instead of N times fewer on N times more links.

A core that cannot be reached, or is draining, refuses with UNAVAILABLE: the
stream is opened on the next one, and the core that refused goes to the back of the line for a
second. Every other refusal (a limit, a bad request) is the server's answer, not the core's, and is
raised as it is.

A resumable stream lives in the core that runs it. `attach` asks the core that this bridge opened it
on first (a bounded map of request ids), then the others: a core that does not know the stream
refuses with NOT_FOUND, and the next is asked. A stream opened through another bridge process is
found the same way, by asking each core.

`list_models`, `usage` and `ready` go to any core that answers (they share the model list and the
ledger).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from streamgate.contract import ErrorCode, StreamError
from streamgate.link.client import CoreClient, CoreStream
from streamgate.v1 import streamgate_pb2 as pb

T = TypeVar("T")

#: Seconds a core that refused with UNAVAILABLE waits at the back of the line.
BACK_OFF = 1.0
#: Request ids of resumable streams remembered with their core.
REMEMBERED = 65536


class CorePool:
    """Several cores behind the interface of one `CoreClient`."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        coalesce: bool = True,
        link_token: str | None = None,
        trace: bool = False,
        spread: bool = True,
        links: Sequence[str] | None = None,
    ) -> None:
        """`links`: each core's link socket (`CoreClient`'s `link`), in the order of `addresses`."""
        if not addresses:
            raise ValueError("a pool needs at least one core")
        if links is not None and len(links) != len(addresses):
            raise ValueError(f"{len(links)} link(s) for {len(addresses)} core(s): one per core")
        self.address = ",".join(addresses)
        self.clients = [
            CoreClient(a, coalesce=coalesce, link_token=link_token, trace=trace, link=links[i] if links else None)
            for i, a in enumerate(addresses)
        ]
        self._next = 0
        self._spread = spread
        self._down_until = [0.0] * len(self.clients)
        self._where: OrderedDict[str, int] = OrderedDict()

    def _order(self, first: int | None = None) -> list[int]:
        """Every core once: `first`, then in turn from the next one, those that refused lately last."""
        n = len(self.clients)
        if first is None:
            first = self._next
            if self._spread:
                self._next = (first + 1) % n
        order = [(first + i) % n for i in range(n)]
        now = time.monotonic()
        return sorted(order, key=lambda i: self._down_until[i] > now)  # stable: the turn order stays

    async def _first(
        self, order: list[int], call: Callable[[CoreClient], Awaitable[T]], skip: ErrorCode
    ) -> tuple[int, T]:
        """`call` on each core in `order` until one does not refuse with `skip` (or UNAVAILABLE)."""
        error: StreamError | None = None
        for index in order:
            try:
                return index, await call(self.clients[index])
            except StreamError as exc:
                if exc.code is ErrorCode.UNAVAILABLE:
                    self._down_until[index] = time.monotonic() + BACK_OFF
                elif exc.code is not skip:
                    raise
                if error is None or error.code is ErrorCode.UNAVAILABLE:  # a core's own answer over "unreachable"
                    error = exc
        assert error is not None
        raise error

    async def open(
        self, request: pb.GenerateRequest, authorization: str | None = None, transport: str = ""
    ) -> CoreStream:
        """`CoreClient.open` on the next core that is up."""
        index, stream = await self._first(
            self._order(), lambda client: client.open(request, authorization, transport), ErrorCode.UNAVAILABLE
        )
        if request.resumable:
            self._where[stream.request_id] = index
            if len(self._where) > REMEMBERED:
                self._where.popitem(last=False)
        return stream

    async def attach(self, request_id: str, after: int, authorization: str | None = None) -> CoreStream:
        """`CoreClient.attach` on the core that runs the stream."""
        _, stream = await self._first(
            self._order(self._where.get(request_id, 0)),
            lambda client: client.attach(request_id, after, authorization),
            ErrorCode.NOT_FOUND,
        )
        return stream

    async def list_models(self, authorization: str | None = None) -> pb.ListModelsResponse:
        _, answer = await self._first(
            self._order(), lambda client: client.list_models(authorization), ErrorCode.UNAVAILABLE
        )
        return answer

    async def usage(self, request: pb.GetUsageRequest, authorization: str | None = None) -> pb.GetUsageResponse:
        _, answer = await self._first(
            self._order(), lambda client: client.usage(request, authorization), ErrorCode.UNAVAILABLE
        )
        return answer

    async def ready(self, timeout: float = 1.0) -> bool:
        """Whether a core answers its health check with SERVING."""
        for index in self._order():
            if await self.clients[index].ready(timeout):
                return True
        return False

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
