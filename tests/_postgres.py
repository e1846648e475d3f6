"""A real PostgreSQL server for tests: Debian's binaries, in a temporary directory, on 127.0.0.1.

`PostgresServer().start()` runs initdb and `pg_ctl start` (about 2 s); `stop()` is `pg_ctl stop -m
fast` (what a restart or a failover does to clients: open connections are closed at once), and
`start()` again brings it back on the same port with the same data. `dsn` is a
`postgresql://` URL; `create_database()` gives each test a database of its own.

PostgreSQL refuses to run as root. When the tests run as root, the server runs as the `postgres`
user that Debian's package creates (or `nobody`), through `setpriv`; the data directory is made
for that user under /tmp. scripts/setup installs the package (`postgresql`); the binaries are
found under /usr/lib/postgresql/*/bin, or in $STREAMGATE_PG_BIN.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

#: The server's superuser (trust authentication on 127.0.0.1 only: a test server).
USER = "streamgate"


def pg_bin() -> Path | None:
    """The directory of PostgreSQL's server binaries, or None when none is installed."""
    if configured := os.environ.get("STREAMGATE_PG_BIN"):
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL server of its own, for a test or a test session."""

    def __init__(self) -> None:
        bin_dir = pg_bin()
        if bin_dir is None or not (bin_dir / "pg_ctl").exists():
            raise RuntimeError("PostgreSQL's server is not installed: run scripts/setup (Debian's postgresql)")
        self.bin = bin_dir
        self.port = _free_port()
        self._as: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    owner = pwd.getpwnam(name)
                    break
            if owner is None:
                raise RuntimeError("running as root, and there is no postgres or nobody user to run PostgreSQL as")
            self._as = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups", "--"]
        # Under /tmp when it runs as another user: $TMPDIR may be a directory only root can enter.
        self.root = Path(tempfile.mkdtemp(prefix="streamgate-pg-", dir="/tmp" if owner is not None else None))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._initialized = False

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def dsn_of(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._as, *command], cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        if not self._initialized:
            self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "listen_addresses = '127.0.0.1'\n"
                    f"port = {self.port}\n"
                    "unix_socket_directories = ''\n"
                    "fsync = off\n"
                    "max_connections = 50\n"
                )
            self._initialized = True
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast`: clients' connections are closed at once, as in a restart."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self) -> str:
        """A new empty database on this server; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return self.dsn_of(name)

    def close(self) -> None:
        """Stop the server (immediately) and delete its files."""
        if self._initialized and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
