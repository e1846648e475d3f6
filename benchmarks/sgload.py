"""`sgload` (benchmarks/loadgen, Go): the fake upstream and the closed-loop SSE clients at a few µs of
CPU a token, where the Python ones (streamgate.testing.upstream, benchmarks.load) cost about 100 µs a
token each, as much as the gateway they load. On a machine where the load runs beside the gateway,
that CPU is the gateway's to use.

    find_sgload()                 # the binary: $SGLOAD, .device/sgload, or built from source with Go
    upstream_argv(binary, port, pace)
    GoClients(binary).run(job)    # a closed-loop SSE job of benchmarks.load; the same `Result`
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.load import Job, Result, closed_loop_sse

if TYPE_CHECKING:
    from benchmarks.systems import Pace

ROOT = Path(__file__).resolve().parent.parent
#: Where the binary is: $SGLOAD (benchmarks/device_scale.sh unpacks it there), else built here.
SGLOAD = Path(os.environ.get("SGLOAD") or ROOT / ".device" / "sgload")


def find_sgload() -> Path | None:
    """The Go load generator: the one built (and carried), else built now when Go is here; None without Go."""
    if SGLOAD.exists():
        return SGLOAD
    if shutil.which("go") is None:
        return None
    SGLOAD.parent.mkdir(exist_ok=True)
    build = ["go", "build", "-trimpath", "-o", str(SGLOAD), "."]
    subprocess.run(build, cwd=ROOT / "benchmarks" / "loadgen", env={**os.environ, "CGO_ENABLED": "0"}, check=True)
    return SGLOAD


def upstream_argv(binary: Path, port: int, pace: Pace) -> list[str]:
    """The fake upstream on `port`: one process, every CPU; it prints `upstream listening on URL`."""
    return [str(binary), "upstream", "--port", str(port), *pace.argv()]


class GoClients:
    """benchmarks.load's closed-loop job, run by `sgload clients` (one process, every CPU): the same
    streams, the same lengths drawn, the same window, the same `Result`."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    async def run(self, job: Job) -> Result:
        assert closed_loop_sse(job), "sgload runs closed-loop SSE jobs"
        target = job.target
        spec = {
            "url": target.address,
            "body": dict(target.body),
            "headers": dict(target.headers),
            "dialect": target.dialect,
            "streams": job.streams,
            "start_at": job.start_at,
            "ramp_s": job.ramp_s,
            "loop_s": job.loop_s,
            "lengths": list(job.lengths or ()),
            "window": list(job.window or (-1e9, 1e9)),
            "timeout_s": job.timeout_s,
            "seed": job.seed,
        }
        proc = await asyncio.create_subprocess_exec(
            str(self.binary), "clients", "--job", json.dumps(spec), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"sgload clients exited with {proc.returncode}")
        fields = json.loads(out)
        if not fields["first_start"]:
            fields["first_start"] = math.inf
        return Result(**fields)
