"""Stream a prompt from a running core and print the chunks as they come, then the final figures.

.venv/bin/python clients/python/example.py [ADDRESS] [QUERY]
"""

from __future__ import annotations

import asyncio
import sys

from streamgate.client import Chunk, Completion, StreamgateClient


async def main(address: str, query: str) -> None:
    async with StreamgateClient(address) as client:
        async for event in client.generate(query, timeout=60):
            if isinstance(event, Chunk):
                print(event.content, end="", flush=True)
            elif isinstance(event, Completion):
                m = event.metrics
                print(f"\n\nmodel {event.model}, finish {event.finish_reason}")
                usage = event.usage
                print(f"tokens {usage.prompt_tokens} in + {usage.completion_tokens} out, cost {event.cost_usd}")
                print(f"time to first token {m.ttft_ms:.0f} ms, {m.tokens_per_second:.1f} tokens/s, {m.chunks} chunks")
            else:
                print(f"\n\nfailed: {event.error.code.value}: {event.error.message}", file=sys.stderr)


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    query = sys.argv[2] if len(sys.argv) > 2 else "Hello, how are you?"
    asyncio.run(main(address, query))
