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
import time
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from crm.ingest.load import POOL_MIN_BYTES, FileResult, ingest_file, parse_pool
from crm.settings import Settings

log = logging.getLogger(__name__)

DONE = ("loaded", "partial", "skipped")


def source_of(segment: Path) -> str:
    return segment.name.split(".", 1)[0]


def ready_segments(ready: Path) -> list[Path]:
    """Oldest first (the name carries the time the segment was opened)."""

    def opened(p: Path) -> int:
        parts = p.name.split(".")
        return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0

    return sorted(ready.glob("*.jsonl"), key=opened)


def load_ready(
    ready: Path,
    url: str,
    settings: Settings,
    on_load: Callable[[FileResult], None] | None = None,
    pool: Executor | None = None,
) -> tuple[int, str | None]:
    """Load every segment waiting in ``ready``; (segments loaded, error that stopped it).
    Large segments (traffic peaks, a backlog) are parsed in ``pool`` while this process
    COPYs, as large files are."""
    done = 0
    for segment in ready_segments(ready):
        try:
            big = segment.stat().st_size >= POOL_MIN_BYTES
        except FileNotFoundError:  # loaded by another loader meanwhile
            continue
        res = ingest_file(
            segment,
            url=url,
            settings=settings,
            source=f"collector:{source_of(segment)}",
            pool=pool if big else None,
        )
        if res.status not in DONE:
            return done, res.message or res.status
        with contextlib.suppress(FileNotFoundError):
            segment.unlink()
        done += 1
        if on_load:
            on_load(res)
    return done, None


def run(
    ready: Path,
    url: str,
    settings: Settings,
    on_load: Callable[[FileResult], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    poll_seconds: float = 0.05,
) -> None:
    """Load segments as they arrive until ``stop()``; back off up to 30 s while loads fail."""
    backoff = 0.0
    pool = parse_pool(settings)
    try:
        while not stop():
            try:
                _, error = load_ready(ready, url, settings, on_load, pool)
            except BrokenProcessPool as exc:  # a parser died (killed, out of memory): new ones
                log.warning("collector loader: %s; starting new parser processes", exc)
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                pool = parse_pool(settings)
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # keep the loader alive; the segment stays for a retry
                log.exception("collector loader")
                error = f"{type(exc).__name__}: {exc}"
            if error:
                backoff = min(30.0, max(1.0, backoff * 2))
                log.warning(
                    "loading collected events failed (%s); retrying in %.0f s", error, backoff
                )
                time.sleep(backoff)
            else:
                backoff = 0.0
                time.sleep(poll_seconds)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
