"""A real Redis server for tests: Debian's redis-server, in a temporary directory, on 127.0.0.1.

`RedisServer().start()` runs it on a free port, without persistence (`--save ""`, `--appendonly no`:
a restart comes back empty, as a cache node that lost its memory does); `stop()` ends it (SIGTERM:
clients' connections are closed at once) and `start()` again brings it back on the same port.
`password` sets `requirepass`, and `url` then carries it, as a deployment's does.
scripts/setup installs the package (`redis-server`); the binary is found on PATH or in
$STREAMGATE_REDIS_SERVER.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def redis_server_binary() -> str | None:
    return (
        os.environ.get("STREAMGATE_REDIS_SERVER")
        or shutil.which("redis-server")
        or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One Redis server of its own, for a test."""

    def __init__(self, password: str | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup (Debian's redis-server)")
        self.binary = binary
        self.password = password
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="streamgate-redis-"))
        self.log = self.root / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.root), "--daemonize", "no", "--logfile", str(self.log)]
        if self.password:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"redis-server did not start ({self._process.poll()}):\n{log}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        """End the server (SIGTERM); its clients' connections close at once."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(OSError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
