"""Load event files into ``raw.events`` with COPY: validated, deduplicated, audited.

Each file is one transaction. Every non-blank line ends as exactly one of: loaded, duplicate
(its messageId is already in ``raw.message_ids``, from this file or any earlier one) or
rejected (quarantined in ``raw.rejected_events`` with the reason and its original bytes). A
file whose checksum has already been loaded is skipped, so re-running is a no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

from crm import db
from crm.ingest.files import DamagedFile, checksum, expand, iter_lines
from crm.ingest.validate import Limits, Rejected, Row, parse_line
from crm.settings import Settings, get_settings

log = logging.getLogger(__name__)

EVENT_COLUMNS = (
    "message_id, type, event, user_id, anonymous_id, previous_id, event_at, event_date, "
    "sent_at, properties, traits, context, load_id, line_number"
)
MAX_TEXT_PREVIEW = 1_000_000
COPY_CHUNK = 1 << 20


@dataclass
class FileResult:
    path: Path
    checksum: str = ""
    load_id: int | None = None
    status: str = "running"
    lines: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    message: str | None = None
    seconds: float = 0.0
    skipped_as: int | None = None  # load_id of the earlier load when skipped

    @property
    def skipped(self) -> bool:
        return self.skipped_as is not None


@dataclass
class _Batch:
    ids: list[str] = field(default_factory=list)
    days: list[date] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    rejects: list[tuple[int, str, bytes]] = field(default_factory=list)

    @property
    def dates(self) -> set[date]:
        return set(self.days)

    def ids_lines(self) -> Iterable[str]:
        for m, d in zip(self.ids, self.days, strict=True):
            yield f"{_text(m)}\t{d.isoformat()}\n"


def limits_from(settings: Settings, now: datetime | None = None) -> Limits:
    now = now or datetime.now(UTC)
    return Limits(
        max_line_bytes=settings.ingest_max_line_bytes,
        max_depth=settings.ingest_max_depth,
        min_ts=datetime.fromisoformat(settings.ingest_min_timestamp).astimezone(UTC),
        max_ts=now + timedelta(seconds=settings.ingest_max_future_seconds),
    )


def _text(v: str) -> str:
    """A value in COPY's text format."""
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v:
        return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return v


def _opt(v: str | None) -> str:
    return "\\N" if v is None else _text(v)


def _json(v: object) -> str:
    # orjson escapes control characters, so only the backslash needs COPY escaping.
    return orjson.dumps(v).decode().replace("\\", "\\\\")


def copy_line(row: Row, load_id: int, line_no: int) -> str:
    return "\t".join(
        (
            _text(row.message_id),
            row.type,
            _opt(row.event),
            _opt(row.user_id),
            _opt(row.anonymous_id),
            _opt(row.previous_id),
            row.event_at.isoformat(),
            row.event_date.isoformat(),
            "\\N" if row.sent_at is None else row.sent_at.isoformat(),
            _json(row.properties),
            _json(row.traits),
            _json(row.context),
            str(load_id),
            str(line_no),
        )
    ) + "\n"


def _line_text(raw: bytes) -> str:
    text = raw[:MAX_TEXT_PREVIEW].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return text if len(raw) <= MAX_TEXT_PREVIEW else text + f"… [{len(raw):,} bytes in line_bytes]"


def _write_chunked(copy: psycopg.Copy, lines: Iterable[str]) -> None:
    buf: list[str] = []
    size = 0
    for line in lines:
        buf.append(line)
        size += len(line)
        if size >= COPY_CHUNK:
            copy.write("".join(buf))
            buf, size = [], 0
    if buf:
        copy.write("".join(buf))


def _flush(
    conn: psycopg.Connection, batch: _Batch, res: FileResult, path: Path, load_id: int
) -> None:
    if batch.ids:
        conn.execute("select raw.ensure_event_partitions(%s::date[])", (sorted(batch.dates),))
        with conn.cursor() as cur:
            with cur.copy("copy pg_temp._ids (message_id, event_date) from stdin") as cp:
                _write_chunked(cp, batch.ids_lines())
            cur.execute(
                "insert into raw.message_ids (message_id, event_date, load_id)"
                " select message_id, event_date, %s from pg_temp._ids"
                " on conflict (message_id) do nothing returning message_id",
                (load_id,),
            )
            new = {r[0] for r in cur.fetchall()}
            cur.execute("truncate pg_temp._ids")
            with cur.copy(f"copy raw.events ({EVENT_COLUMNS}) from stdin") as cp:
                _write_chunked(
                    cp, (ln for m, ln in zip(batch.ids, batch.lines, strict=True) if m in new)
                )
        res.loaded += len(new)
        res.duplicates += len(batch.ids) - len(new)
    if batch.rejects:
        with conn.cursor() as cur:
            cur.executemany(
                """
                insert into raw.rejected_events
                    (load_id, file_path, checksum, line_number, reason, line_text, line_bytes)
                values (%s, %s, %s, %s, %s, %s, %s)
                on conflict (checksum, line_number) do nothing
                """,
                [
                    (load_id, str(path), res.checksum, n, reason, _line_text(raw), raw)
                    for n, reason, raw in batch.rejects
                ],
            )
        res.rejected += len(batch.rejects)


def _load_lines(
    conn: psycopg.Connection,
    path: Path,
    res: FileResult,
    load_id: int,
    limits: Limits,
    batch_lines: int,
    fast: bool,
    on_lines: Callable[[int], None] | None,
) -> None:
    seen: set[str] = set()
    batch = _Batch()
    pending = 0
    try:
        for line_no, raw in iter_lines(path):
            if not raw.strip():
                continue
            res.lines += 1
            try:
                row = parse_line(raw, limits, fast=fast)
                line = copy_line(row, load_id, line_no)
            except Rejected as exc:
                batch.rejects.append((line_no, exc.reason, raw))
            except (orjson.JSONEncodeError, OverflowError, ValueError) as exc:
                batch.rejects.append((line_no, f"cannot store value: {exc}", raw))
            else:
                if row.message_id in seen:
                    res.duplicates += 1
                else:
                    seen.add(row.message_id)
                    batch.ids.append(row.message_id)
                    batch.days.append(row.event_date)
                    batch.lines.append(line)
            pending += 1
            if pending >= batch_lines:
                _flush(conn, batch, res, path, load_id)
                if on_lines:
                    on_lines(pending)
                batch, pending = _Batch(), 0
    except DamagedFile as exc:
        res.status = "partial"
        res.message = str(exc)
    _flush(conn, batch, res, path, load_id)
    if on_lines:
        on_lines(pending)


def ingest_file(
    path: Path,
    *,
    url: str,
    settings: Settings,
    source: str = "cli",
    fast: bool = True,
    on_lines: Callable[[int], None] | None = None,
) -> FileResult:
    started = time.perf_counter()
    res = FileResult(path=path, checksum=checksum(path))
    limits = limits_from(settings)
    try:
        with db.connect(url) as conn, conn.transaction():
            db.require_migrated(conn)
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (res.checksum,))
            done = conn.execute(
                "select load_id from raw.load_audit where checksum = %s"
                " and status in ('loaded', 'partial') order by load_id limit 1",
                (res.checksum,),
            ).fetchone()
            if done:
                res.skipped_as = done[0]
                res.status = "skipped"
                return res
            load_id = conn.execute(
                "insert into raw.load_audit (file_path, file_name, checksum, size_bytes, source)"
                " values (%s, %s, %s, %s, %s) returning load_id",
                (str(path), path.name, res.checksum, path.stat().st_size, source),
            ).fetchone()[0]  # type: ignore[index]
            res.load_id = load_id
            conn.execute(
                "create temp table if not exists _ids (message_id text primary key,"
                " event_date date) on commit delete rows"
            )
            _load_lines(
                conn, path, res, load_id, limits, settings.ingest_batch_lines, fast, on_lines
            )
            if res.status == "running":
                res.status = "loaded"
            conn.execute(
                "update raw.load_audit set lines = %s, loaded = %s, duplicates = %s,"
                " rejected = %s, status = %s, message = %s, finished_at = now()"
                " where load_id = %s",
                (
                    res.lines,
                    res.loaded,
                    res.duplicates,
                    res.rejected,
                    res.status,
                    res.message,
                    load_id,
                ),
            )
    except (psycopg.Error, OSError) as exc:
        # Nothing of this file was committed; record the failure so ops can see and retry.
        res.status, res.message = "failed", f"{type(exc).__name__}: {exc}".strip()
        res.lines = res.loaded = res.duplicates = res.rejected = 0
        res.load_id = _record_failure(url, path, res, source)
    finally:
        res.seconds = time.perf_counter() - started
    return res


def _record_failure(url: str, path: Path, res: FileResult, source: str) -> int | None:
    try:
        with db.connect(url) as conn, conn.transaction():
            row = conn.execute(
                "insert into raw.load_audit (file_path, file_name, checksum, size_bytes, source,"
                " status, message, finished_at) values (%s, %s, %s, %s, %s, 'failed', %s, now())"
                " returning load_id",
                (
                    str(path),
                    path.name,
                    res.checksum,
                    path.stat().st_size if path.exists() else 0,
                    source,
                    res.message,
                ),
            ).fetchone()
            return row[0] if row else None
    except (psycopg.Error, OSError):
        log.exception("could not record the failed load of %s", path)
        return None


def ingest_paths(
    paths: list[Path],
    *,
    url: str | None = None,
    settings: Settings | None = None,
    source: str = "cli",
    fast: bool = True,
    on_file: Callable[[FileResult], None] | None = None,
    on_lines: Callable[[int], None] | None = None,
) -> list[FileResult]:
    """Ingest files (directories are searched for *.jsonl[.gz]) one transaction each."""
    settings = settings or get_settings()
    url = url or db.database_url(settings)
    results = []
    for path in expand(paths):
        res = ingest_file(
            path, url=url, settings=settings, source=source, fast=fast, on_lines=on_lines
        )
        results.append(res)
        if on_file:
            on_file(res)
    return results
