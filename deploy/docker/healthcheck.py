"""The container's health check: the bridge's /healthz, or the core's gRPC health check.

    python healthcheck.py                      # http://127.0.0.1:$STREAMGATE_HTTP_PORT/healthz (8000)
    python healthcheck.py grpc                 # grpc.health.v1 on 127.0.0.1:$STREAMGATE_GRPC_PORT (50051)

Exit 0 when healthy, 1 otherwise (what Docker's HEALTHCHECK reads). The image's default (`streamgate serve`,
the bridge and its core in one container) and a bridge container use the first; a core container the second
(deploy/compose.yaml). Liveness, not readiness: a bridge whose core is away is alive (its /readyz says 503).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def http() -> bool:
    port = os.environ.get("STREAMGATE_HTTP_PORT", "8000")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return bool(response.status == 200)


def grpc_health() -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = os.environ.get("STREAMGATE_GRPC_PORT", "50051")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    check = grpc_health if sys.argv[1:] == ["grpc"] else http
    try:
        return 0 if check() else 1
    except Exception as exc:  # any failure to answer is unhealthy: say which, for `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
