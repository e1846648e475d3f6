"""The spill file: rows the in-memory queue had no room for, kept on local disk until the
database takes them.

JSON lines, one `UsageRow` a line. Every method does file I/O and is meant for the ledger's spill
thread (never the event loop's): `append()` writes rows, `read_batch()` reads rows back to replay
them. To replay, the file is first renamed to its replay name, so that appends go on into a fresh
file; the replay file is read in batches and deleted once every batch is written (`advance()`).
Both files together hold at most `max_bytes`.

A data directory may serve several processes: each takes a *slot*, the first whose lock file it
can lock (`ledger.spill.lock`, `ledger.spill.1.lock`, ...), and its files are that slot's. What a
process left behind is replayed by the next one that takes its slot.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ._rows import LedgerError, UsageRow

logger = logging.getLogger("streamgate.ledger")

#: Processes that may share a data directory.
MAX_SLOTS = 16


class SpillFile:
    """One slot's spill: the file rows are appended to and the one being replayed."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock_file = self._take_slot(directory)
        stem = Path(self._lock_file.name).with_suffix("")
        self.path = stem.with_suffix(stem.suffix + ".jsonl")
        self.replay_path = stem.with_suffix(stem.suffix + ".replay.jsonl")
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()  # appends after the ledger closed come from the loop's thread
        self._offset = self._next_offset = 0
        self._at_end = False
        self._replay_bytes = self.replay_path.stat().st_size if self.replay_path.exists() else 0
        #: Bytes in both files (read from any thread; written under the lock).
        self.bytes = self._replay_bytes + (self.path.stat().st_size if self.path.exists() else 0)
        #: Lines of a spill file that were not rows (cut short by a crash), skipped.
        self.bad_lines = 0

    @staticmethod
    def _take_slot(directory: Path) -> IO[bytes]:
        for slot in range(MAX_SLOTS):
            name = "ledger.spill.lock" if slot == 0 else f"ledger.spill.{slot}.lock"
            lock = (directory / name).open("ab")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            return lock
        raise LedgerError(f"{MAX_SLOTS} processes already use the ledger's data directory {directory}")

    @property
    def has_rows(self) -> bool:
        return self.bytes > 0

    def append(self, rows: Sequence[UsageRow]) -> int:
        """Write the rows that fit under the bound, in one write; how many it kept."""
        lines: list[bytes] = []
        size = 0
        with self._lock:
            for row in rows:
                line = (row.to_json() + "\n").encode("ascii")
                if self.bytes + size + len(line) > self.max_bytes:
                    break
                lines.append(line)
                size += len(line)
            if not lines:
                return 0
            try:
                if self._file is None:
                    self._file = self._open()
                self._file.write(b"".join(lines))
                self._file.flush()
            except OSError as error:
                logger.error("ledger: cannot write the spill file %s: %s", self.path, error)
                return 0
            self.bytes += size
            return len(lines)

    def _open(self) -> IO[bytes]:
        file = self.path.open("ab")
        if file.tell() > 0:  # a line a crash cut short must not swallow the next one
            with self.path.open("rb") as tail:
                tail.seek(-1, os.SEEK_END)
                if tail.read(1) != b"\n":
                    file.write(b"\n")
                    self.bytes += 1
        return file

    def read_batch(self, limit: int) -> list[UsageRow]:
        """The next rows to replay (none when there are none); `advance()` once they are written."""
        with self._lock:
            if not self.replay_path.exists():
                self._close_file()
                if not self.path.exists():
                    self.bytes = 0
                    return []
                self.path.rename(self.replay_path)
                self._replay_bytes = self.replay_path.stat().st_size
                self._offset = 0
        rows, bad = self._read(limit)
        if bad:
            self.bad_lines += bad
            logger.warning("ledger: %d lines of %s were not rows (cut short?), skipped", bad, self.replay_path)
        if not rows:
            self.advance()
        return rows

    def _read(self, limit: int) -> tuple[list[UsageRow], int]:
        rows: list[UsageRow] = []
        bad = 0
        with self.replay_path.open("rb") as file:
            file.seek(self._offset)
            while len(rows) < limit:
                line = file.readline()
                if not line:
                    break
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("a line cut short")
                    rows.append(UsageRow.from_json(line.decode("ascii")))
                except (ValueError, KeyError, TypeError):
                    bad += 1
            self._next_offset = file.tell()
            self._at_end = file.read(1) == b""
        return rows, bad

    def advance(self) -> None:
        """The rows of the last `read_batch()` are written: move on, and delete a finished file."""
        with self._lock:
            self._offset = self._next_offset
            if self._at_end:
                self.replay_path.unlink(missing_ok=True)
                self.bytes -= self._replay_bytes
                self._replay_bytes = self._offset = self._next_offset = 0
                self._at_end = False

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                logger.error("ledger: cannot write the spill file %s: %s", self.path, error)
            self._file = None

    def release(self) -> None:
        """Close the file (`append()` opens it again) and let go of the slot."""
        with self._lock:
            self._close_file()
            self._lock_file.close()
