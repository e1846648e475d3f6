"""A live core in front of the fake upstream, for client tests in other languages.

    .venv/bin/python -m streamgate.testing.live [--max-concurrent-streams 2]

Prints one JSON line, then serves until stdin closes or SIGTERM:

    {"core": "127.0.0.1:PORT", "upstream": "http://127.0.0.1:PORT/v1", "counters": "http://127.0.0.1:PORT/counters"}

Models (each a scenario of the fake upstream):
- `openai/fast` (the default): 8 tokens, at once.
- `openai/slow`: 1000 tokens, 50 ms apart (for cancel, deadline and limit tests).
- `openai/stall`: no first token for an hour.
`GET counters` answers `{"started", "finished", "disconnects", "active"}` of the upstream, so a
test can see that a cancelled call closed the upstream request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from streamgate.core import LiteLLMConfig
from streamgate.rpc.server import CoreServer, CoreServerConfig
from streamgate.testing.upstream import FakeUpstream, Scenario

SCENARIOS = {
    "fast": Scenario(tokens=8),
    "slow": Scenario(tokens=1000, delay=0.05),
    "stall": Scenario(tokens=10, first_token_delay=3600),
}


async def run(max_concurrent_streams: int) -> None:
    upstream = FakeUpstream(SCENARIOS["fast"])
    upstream.scenarios.update(SCENARIOS)
    await upstream.start()
    core = CoreServer(
        LiteLLMConfig(
            model="openai/fast",
            allowed_models=tuple(f"openai/{name}" for name in SCENARIOS),
            api_base=upstream.api_base,
            api_key="live-test",
            max_concurrent_streams=max_concurrent_streams,
            coalesce=False,  # client tests check chunk by chunk: one chunk a token
        ),
        CoreServerConfig(grpc_port=0, metrics_port=None, drain_grace=0.0),
    )
    await core.start()
    print(
        json.dumps(
            {
                "core": core.address,
                "upstream": upstream.api_base,
                "counters": f"http://127.0.0.1:{upstream.port}/counters",
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Stop when the test that started us goes away (its end of our stdin closes).
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    eof = asyncio.ensure_future(reader.read())
    await asyncio.wait([eof, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await core.stop(grace=0)
    await upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A live core and fake upstream for client tests.")
    parser.add_argument("--max-concurrent-streams", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.max_concurrent_streams))


if __name__ == "__main__":
    main()
