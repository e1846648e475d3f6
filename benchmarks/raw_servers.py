"""The floor of each transport: servers that make the tokens themselves, with no gateway and no upstream.

    python -m benchmarks.raw_servers grpc --tokens 100 --delay 0.05 --first-token-delay 0
    python -m benchmarks.raw_servers sse  --tokens 100 --delay 0.05 --first-token-delay 0

`grpc` serves `streamgate.v1.StreamGateService/Generate` on grpc.aio (the project's generated stubs):
`chunk` messages, then one `completion`. `sse` serves `POST /query/stream` on aiohttp with the bridge's
frames (`data: {"content": ..., "metadata": {}, "is_final": false}`, then one `is_final: true`). Both pace
their tokens as the fake upstream does (first-token delay, then `delay` between tokens), honour
`max_tokens`, and print "raw <kind> listening on ADDRESS".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from aiohttp import web

from benchmarks.procs import raise_fd_limit, run
from streamgate.testing.upstream import token
from streamgate.v1 import streamgate_pb2 as pb
from streamgate.v1 import streamgate_pb2_grpc as pb_grpc

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Pace:
    tokens: int
    delay: float
    first_token_delay: float

    def count(self, max_tokens: int | None) -> int:
        return min(self.tokens, max_tokens) if max_tokens else self.tokens

    async def tokens_of(self, max_tokens: int | None) -> AsyncIterator[str]:
        await asyncio.sleep(self.first_token_delay)
        for i in range(self.count(max_tokens)):
            if i and self.delay:
                await asyncio.sleep(self.delay)
            yield token(i)


class RawGrpc(pb_grpc.StreamGateServiceServicer):
    def __init__(self, pace: Pace) -> None:
        self.pace = pace

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse]
    ) -> AsyncIterator[pb.GenerateResponse]:
        await context.send_initial_metadata(())
        limit = request.parameters.max_tokens if request.parameters.HasField("max_tokens") else None
        text = []
        index = 0
        async for piece in self.pace.tokens_of(limit):
            text.append(piece)
            yield pb.GenerateResponse(chunk=pb.Chunk(content=piece, index=index))
            index += 1
        yield pb.GenerateResponse(completion=pb.Completion(text="".join(text), finish_reason="stop", model="raw"))

    async def GetMetrics(
        self,
        request: pb.GetMetricsRequest,
        context: grpc.aio.ServicerContext[pb.GetMetricsRequest, pb.GetMetricsResponse],
    ) -> pb.GetMetricsResponse:
        return pb.GetMetricsResponse()


async def serve_grpc(pace: Pace) -> None:
    server = grpc.aio.server()
    pb_grpc.add_StreamGateServiceServicer_to_server(RawGrpc(pace), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"raw grpc listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def frame(content: str, final: bool) -> bytes:
    payload = {"content": content, "metadata": {"finish_reason": "stop"} if final else {}, "is_final": final}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def sse_app(pace: Pace) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        async for piece in pace.tokens_of(body.get("max_tokens")):
            await response.write(frame(piece, final=False))
        await response.write(frame("", final=True))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/query/stream", stream)
    return app


async def serve_sse(pace: Pace) -> None:
    runner = web.AppRunner(sse_app(pace), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    print(f"raw sse listening on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("grpc", "sse"))
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    args = parser.parse_args()
    raise_fd_limit()
    pace = Pace(args.tokens, args.delay, args.first_token_delay)
    with contextlib.suppress(KeyboardInterrupt):
        run(serve_grpc(pace) if args.kind == "grpc" else serve_sse(pace))


if __name__ == "__main__":
    main()
