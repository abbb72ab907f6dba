"""The collector's spool: calls are on disk before the collector says yes.

Each source has one open segment (``open/<source>.<ns>.<pid>.jsonl``, JSON Lines). A single
writer thread appends what requests hand it and then calls ``fdatasync`` once for everything
written meanwhile (group commit: one disk flush serves every request that waited on it), and
only then are those requests answered. A segment older than the flush interval, or idle for a
fifth of it (no call since: the traffic paused, so waiting longer adds latency and no calls),
or holding ``segment_bytes`` (under a burst the loader starts on the first part at once instead
of after a whole flush interval, and loads it while the next fills), is closed and renamed into
``ready/``, where the loader takes it (it loads a segment as it loads any event file, then
deletes it). After a crash, segments left in ``open/`` lose a torn last line (it was never
acknowledged) and move to ``ready/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class SpoolFull(Exception):
    """The spool holds its maximum: nothing more is accepted until the loader catches up."""


@dataclass
class _Segment:
    path: Path
    fd: int
    opened: float
    written: float = 0.0  # when calls were last appended
    size: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate_torn_line(path: Path) -> None:
    """Cut a last line a crash left unfinished (its request was never answered)."""
    with path.open("r+b") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        back = min(size, 1 << 16)
        while True:
            f.seek(size - back)
            tail = f.read(back)
            cut = tail.rfind(b"\n")
            if cut >= 0 or back == size:
                break
            back = min(size, back * 4)
        keep = size - back + cut + 1 if cut >= 0 else 0
        if keep != size:
            f.truncate(keep)
            os.fsync(f.fileno())


class Spool:
    def __init__(
        self, root: Path, max_bytes: int, flush_seconds: float, segment_bytes: int = 16 << 20
    ) -> None:
        self.root, self.max_bytes, self.flush_seconds = root, max_bytes, flush_seconds
        self.segment_bytes = segment_bytes
        self.idle_seconds = flush_seconds / 5
        self.open_dir, self.ready_dir = root / "open", root / "ready"
        self.open_dir.mkdir(parents=True, exist_ok=True)
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._cond = threading.Condition()
        self._pending: list[tuple[str, bytes, Future[None]]] = []
        self._segments: dict[str, _Segment] = {}
        self._bytes = self._scan()
        self._scanned = time.monotonic()
        self._stop = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="crm-spool", daemon=True)
        self._thread.start()

    def _recover(self) -> None:
        for path in sorted(self.open_dir.glob("*.jsonl")):
            _truncate_torn_line(path)
            if path.stat().st_size:
                os.replace(path, self.ready_dir / path.name)
            else:
                path.unlink()
        _fsync_dir(self.ready_dir)
        _fsync_dir(self.open_dir)

    def _scan(self) -> int:
        total = 0
        for d in (self.open_dir, self.ready_dir):
            for p in d.iterdir():
                with contextlib.suppress(FileNotFoundError):  # the loader deleted it
                    total += p.stat().st_size
        return total

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    def append(self, source: str, data: bytes) -> Future[None]:
        """Queue whole lines for the source's segment; the future is done once they are on
        disk (fsynced). Raises SpoolFull when the spool holds its maximum."""
        fut: Future[None] = Future()
        with self._cond:
            if self._stop:
                raise SpoolFull("the collector is stopping")
            if self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"the spool holds {self._bytes:,} bytes (limit {self.max_bytes:,})")
            self._bytes += len(data)
            self._pending.append((source, data, fut))
            self._cond.notify()
        return fut

    def close(self) -> None:
        """Write what is queued, close every segment into ready/, stop the writer."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _segment(self, source: str) -> _Segment:
        seg = self._segments.get(source)
        if seg is None:
            path = self.open_dir / f"{source}.{time.time_ns()}.{os.getpid()}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            _fsync_dir(self.open_dir)  # the file itself survives a crash
            now = time.monotonic()
            seg = self._segments[source] = _Segment(path, fd, opened=now, written=now)
        return seg

    def _roll(self, everything: bool) -> None:
        now = time.monotonic()
        closed = False
        for source, seg in list(self._segments.items()):
            if (
                everything
                or now - seg.opened >= self.flush_seconds
                or now - seg.written >= self.idle_seconds
                or seg.size >= self.segment_bytes
            ):
                os.close(seg.fd)  # its data was fsynced before any request was answered
                os.replace(seg.path, self.ready_dir / seg.path.name)
                del self._segments[source]
                closed = True
        if closed:
            _fsync_dir(self.ready_dir)
            _fsync_dir(self.open_dir)
        if now - self._scanned >= self.flush_seconds:
            with self._cond:
                queued = sum(len(d) for _, d, _ in self._pending)
            self._bytes = self._scan() + queued
            self._scanned = now

    def _wait_seconds(self) -> float:
        if not self._segments:
            return self.flush_seconds
        due = min(
            min(seg.opened + self.flush_seconds, seg.written + self.idle_seconds)
            for seg in self._segments.values()
        )
        return max(0.0, due - time.monotonic())

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stop:
                    self._cond.wait(self._wait_seconds())
                batch, self._pending = self._pending, []
                stop = self._stop
            if batch:
                self._write(batch)
            try:
                self._roll(everything=stop)
            except OSError as exc:
                self.error = f"cannot close a spool segment: {exc}"
                log.exception("spool")
            if stop and not self._pending:
                return

    def _write(self, batch: list[tuple[str, bytes, Future[None]]]) -> None:
        touched: dict[str, _Segment] = {}
        failed: dict[str, OSError] = {}
        for source, data, _ in batch:
            if source in failed:
                continue
            try:
                seg = self._segment(source)
                view = memoryview(data)
                while view:
                    view = view[os.write(seg.fd, view) :]
                seg.size += len(data)
                seg.written = time.monotonic()
                touched[source] = seg
            except OSError as exc:
                failed[source] = exc
        for source, seg in touched.items():
            try:
                os.fdatasync(seg.fd)
            except OSError as exc:
                failed[source] = exc
        for source, _, fut in batch:
            if source in failed:
                self.error = f"cannot write the spool: {failed[source]}"
                fut.set_exception(failed[source])
            else:
                fut.set_result(None)
        if failed:
            # a segment that failed may hold a torn line: close it, recovery cuts it later
            for source in failed:
                if source in self._segments:
                    with contextlib.suppress(OSError):
                        os.close(self._segments.pop(source).fd)
        else:
            self.error = None
