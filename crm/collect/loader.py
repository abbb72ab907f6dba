"""Move closed spool segments into ``raw.events``: each segment is one load of the file loader.

The same code path as files (validation, minimisation, erased-person tombstones, messageId
dedup across HTTP and files, quarantine, ``raw.load_audit``), so a micro-batch is a load like
a daily file and the dbt incremental models take it the same way. A segment is deleted once
its load committed (or was found committed before: a crash between the two re-loads nothing,
the checksum is known). While PostgreSQL is down, segments wait and are retried with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from crm import db
from crm.ingest.load import POOL_MIN_BYTES, FileResult, ingest_file, parse_pool
from crm.settings import Settings

log = logging.getLogger(__name__)

DONE = ("loaded", "partial", "skipped")
_thread = threading.local()  # each loading thread's connection


def source_of(segment: Path) -> str:
    return segment.name.split(".", 1)[0]


def ready_segments(ready: Path) -> list[Path]:
    """Oldest first (the name carries the time the segment was opened)."""

    def opened(p: Path) -> int:
        parts = p.name.split(".")
        return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0

    return sorted(ready.glob("*.jsonl"), key=opened)


def load_segment(
    segment: Path, url: str, settings: Settings, pool: Executor | None = None
) -> FileResult | None:
    """Load one segment as one load (None: another loader took it meanwhile), on this
    thread's connection (a new connection per micro-batch cost PostgreSQL about 25 ms of CPU
    each). Large segments (traffic peaks, a backlog) are parsed in ``pool`` while this thread
    COPYs, as large files are."""
    try:
        big = segment.stat().st_size >= POOL_MIN_BYTES
    except FileNotFoundError:
        return None
    conn = getattr(_thread, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _thread.conn = db.connect(url)
    res = ingest_file(
        segment,
        url=url,
        settings=settings,
        source=f"collector:{source_of(segment)}",
        pool=pool if big else None,
        conn=conn,
    )
    if res.status == "failed":  # PostgreSQL went away, or the session is suspect: a new one
        with contextlib.suppress(Exception):
            conn.close()
        _thread.conn = None
    return res


def _settle(segment: Path, res: FileResult) -> str | None:
    """Delete the segment of a committed load and return None; else the load's error (the
    segment stays for a retry)."""
    if res.status not in DONE:
        return res.message or res.status
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()
    return None


def load_ready(
    ready: Path, url: str, settings: Settings, pool: Executor | None = None
) -> tuple[int, str | None]:
    """Load every segment waiting in ``ready``, one after another; (segments loaded, the
    error that stopped it)."""
    done = 0
    for segment in ready_segments(ready):
        res = load_segment(segment, url, settings, pool)
        if res is None:
            continue
        error = _settle(segment, res)
        if error:
            return done, error
        done += 1
    return done, None


def run(
    ready: Path,
    url: str,
    settings: Settings,
    on_load: Callable[[FileResult], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    poll_seconds: float = 0.05,
) -> None:
    """Load segments as they arrive until ``stop()``, oldest first, up to
    ``settings.collect_loaders`` at once (each its own transaction: while one waits on
    PostgreSQL or its parser, another's work fills the cores; loads may commit out of order,
    which the incremental models allow for). A segment is deleted once its load committed.
    When a load fails, the others in flight end first, then the loader backs off (up to 30 s)
    with nothing in flight; parser processes that died are replaced once, meanwhile."""
    backoff = 0.0
    pool = parse_pool(settings)
    loading: dict[Future[FileResult | None], Path] = {}
    loaders = ThreadPoolExecutor(settings.collect_loaders, thread_name_prefix="crm-load")

    def finish(futures: set[Future[FileResult | None]]) -> tuple[list[str], bool]:
        """Settle finished loads: (their errors, whether a parser process died)."""
        errors: list[str] = []
        broken = False
        for fut in futures:
            segment = loading.pop(fut)
            try:
                res = fut.result()
            except BrokenProcessPool as exc:  # a parser died (killed, out of memory)
                broken = True
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # keep the loader alive; the segment stays
                log.exception("collector loader")
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if res is None:
                continue
            error = _settle(segment, res)
            if error:
                errors.append(error)
            elif on_load:
                on_load(res)
        return errors, broken

    try:
        while not stop() or loading:
            if not stop():
                busy = set(loading.values())
                for segment in ready_segments(ready):
                    if len(loading) >= settings.collect_loaders:
                        break
                    if segment not in busy:
                        loading[loaders.submit(load_segment, segment, url, settings, pool)] = (
                            segment
                        )
            if not loading:
                time.sleep(poll_seconds)
                continue
            done, _ = wait(loading, timeout=poll_seconds, return_when=FIRST_COMPLETED)
            errors, broken = finish(done)
            if errors:  # the others end too: nothing new starts before the pause
                more, also_broken = finish(wait(loading).done)
                errors += more
                if broken or also_broken:
                    log.warning("collector loader: a parser process died; starting new ones")
                    if pool is not None:
                        pool.shutdown(wait=False, cancel_futures=True)
                    pool = parse_pool(settings)
                backoff = min(30.0, max(1.0, backoff * 2))
                log.warning(
                    "loading collected events failed (%s); retrying in %.0f s", errors[0], backoff
                )
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline and not stop():
                    time.sleep(min(poll_seconds * 4, 0.5))
            elif done:
                backoff = 0.0
    finally:
        loaders.shutdown(wait=True)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
