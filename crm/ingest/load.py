"""Load event files into ``raw.events`` with COPY: validated, deduplicated, audited.

Each file is one transaction. Every non-blank line ends as exactly one of: loaded, duplicate
(its messageId is already in ``raw.message_ids``, from this file or any earlier one) or
rejected (quarantined in ``raw.rejected_events`` with the reason and its original bytes). A
file whose checksum has already been loaded is skipped, so re-running is a no-op.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from crm import db
from crm.ingest.files import DamagedFile, checksum, expand, iter_blocks
from crm.ingest.minimise import minimise
from crm.ingest.validate import Limits, Rejected, Row, parse_line
from crm.settings import Settings, get_settings

log = logging.getLogger(__name__)

EVENT_COLUMNS = (
    "message_id, type, event, user_id, anonymous_id, previous_id, event_at, event_date, "
    "sent_at, payload, load_id, line_number"
)
CONTACT_COLUMNS = "message_id, user_id, anonymous_id, event_at, traits, load_id"
MAX_TEXT_PREVIEW = 1_000_000
COPY_CHUNK = 1 << 20
_COPY_IDS = "copy raw.message_ids (message_id, event_date, load_id) from stdin"
BLOCK_BYTES = 1 << 20  # whole lines per unit of work sent to a parser process
MIN_FLUSH_LINES = 2_000
POOL_MIN_BYTES = 8 << 20  # smaller files are parsed in-process: a pool would cost more


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
    erased: int = 0  # lines of people erased (crm privacy erase): dropped, never stored
    message: str | None = None
    seconds: float = 0.0
    skipped_as: int | None = None  # load_id of the earlier load when skipped

    @property
    def skipped(self) -> bool:
        return self.skipped_as is not None


@dataclass(slots=True)
class Parsed:
    """One chunk of lines after validation: COPY-ready rows and quarantined lines."""

    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # COPY lines for raw.message_ids
    rows: list[str] = field(default_factory=list)  # COPY lines for raw.events
    # (messageId, COPY line for pii.contact_traits): personal traits taken out of a call
    contacts: list[tuple[str, str]] = field(default_factory=list)
    days: set[str] = field(default_factory=set)
    rejects: list[tuple[int, str, bytes]] = field(default_factory=list)


def limits_from(settings: Settings, now: datetime | None = None) -> Limits:
    now = now or datetime.now(UTC)
    return Limits(
        max_line_bytes=settings.ingest_max_line_bytes,
        max_depth=settings.ingest_max_depth,
        min_ts=datetime.fromisoformat(settings.ingest_min_timestamp).astimezone(UTC),
        max_ts=now + timedelta(seconds=settings.ingest_max_future_seconds),
        advertising_id=settings.ingest_advertising_id,
    )


def _text(v: str) -> str:
    """A value in COPY's text format."""
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v:
        return (
            v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        )
    return v


def _opt(v: str | None) -> str:
    return "\\N" if v is None else _text(v)


def copy_line(row: Row, raw: bytes, day: str, load_id: int, line_no: int) -> str:
    """The row in COPY text format; the payload is the original line, not a re-encoding."""
    sent = "\\N" if row.sent_at is None else row.sent_at.isoformat()
    return (
        f"{_text(row.message_id)}\t{row.type}\t{_opt(row.event)}\t{_opt(row.user_id)}\t"
        f"{_opt(row.anonymous_id)}\t{_opt(row.previous_id)}\t{row.event_at.isoformat()}\t"
        f"{day}\t{sent}\t{_text(raw.decode())}\t{load_id}\t{line_no}\n"
    )


def contact_line(row: Row, personal: dict[str, object], load_id: int) -> str:
    """The personal traits of one call in COPY text format, for pii.contact_traits."""
    traits = json.dumps(personal, default=str, ensure_ascii=False)
    return (
        f"{_text(row.message_id)}\t{_opt(row.user_id)}\t{_opt(row.anonymous_id)}\t"
        f"{row.event_at.isoformat()}\t{_text(traits)}\t{load_id}\n"
    )


def split_block(block: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line of a block of whole lines."""
    for offset, raw in enumerate(block.split(b"\n")):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            yield first_line + offset, raw


def parse_block(
    block: bytes, first_line: int, limits: Limits, load_id: int, fast: bool = True
) -> Parsed:
    """Validate a block of whole lines; pure, so it can run in a worker process.

    The cyclic garbage collector is paused meanwhile: nothing here makes cycles, and its
    passes over the many short-lived objects cost a fifth of the time.
    """
    out = Parsed()
    collecting = gc.isenabled()
    gc.disable()
    try:
        for line_no, raw in split_block(block, first_line):
            try:
                row = parse_line(raw, limits, fast=fast)
                day = row.event_at.date().isoformat()
                stored, personal = minimise(raw, limits.advertising_id)
                line = copy_line(row, stored, day, load_id, line_no)
            except Rejected as exc:
                out.rejects.append((line_no, exc.reason, raw))
            except UnicodeDecodeError as exc:  # in a field the fast path skips undecoded
                out.rejects.append((line_no, f"invalid UTF-8 at byte {exc.start}", raw))
            except (OverflowError, ValueError) as exc:
                out.rejects.append((line_no, f"cannot store value: {exc}", raw))
            else:
                out.ids.append(row.message_id)
                out.keys.append(f"{_text(row.message_id)}\t{day}\t{load_id}\n")
                out.rows.append(line)
                out.days.add(day)
                if personal:
                    out.contacts.append((row.message_id, contact_line(row, personal, load_id)))
    finally:
        if collecting:
            gc.enable()
    return out


def _line_text(raw: bytes) -> str:
    text = raw[:MAX_TEXT_PREVIEW].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return text if len(raw) <= MAX_TEXT_PREVIEW else text + f"… [{len(raw):,} bytes in line_bytes]"


def _line_type(raw: bytes) -> str:
    """A quarantined line's ``type`` when it is a JSON object with one, else ''."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return ""
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind[:40] if isinstance(kind, str) else ""


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


class _Writer:
    """Writes batches of one file's rows inside the file's transaction."""

    def __init__(self, conn: psycopg.Connection, path: Path, digest: str, load_id: int) -> None:
        self.conn, self.path, self.digest, self.load_id = conn, path, digest, load_id
        self.loaded = self.duplicates = self.rejected = 0
        # what raw.call_minutes counts: calls stored by type, lines quarantined by type, reason
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.all_new = True  # no messageId of this load was known so far

    def _stored(self, batch: Parsed, new: set[str]) -> Iterator[str]:
        """The batch's rows whose messageIds are new, counted by type (the second column)."""
        calls = self.calls
        for m, r in zip(batch.ids, batch.rows, strict=True):
            if m in new:
                calls[(r.split("\t", 2)[1], "accepted", "")] += 1
                yield r

    def flush(self, batch: Parsed) -> None:
        if batch.ids:
            new = self._claim_ids(batch)
            keep = self._stored(batch, new)
            with (
                self.conn.cursor() as cur,
                cur.copy(f"copy raw.events ({EVENT_COLUMNS}) from stdin") as cp,
            ):
                _write_chunked(cp, keep)
            if batch.contacts:
                # a messageId repeated in the file keeps its first line's, as raw.events does
                contacts = {m: c for m, c in reversed(batch.contacts) if m in new}
                with (
                    self.conn.cursor() as cur,
                    cur.copy(f"copy pii.contact_traits ({CONTACT_COLUMNS}) from stdin") as cp,
                ):
                    _write_chunked(cp, contacts.values())
            self.loaded += len(new)
            self.duplicates += len(batch.ids) - len(new)
        if batch.rejects:
            with self.conn.cursor() as cur:
                cur.executemany(
                    """
                    insert into raw.rejected_events
                        (load_id, file_path, checksum, line_number, reason, line_text, line_bytes)
                    values (%s, %s, %s, %s, %s, %s, %s)
                    on conflict (checksum, line_number) do nothing
                    """,
                    [
                        (self.load_id, str(self.path), self.digest, n, why, _line_text(raw), raw)
                        for n, why, raw in batch.rejects
                    ],
                )
            self.rejected += len(batch.rejects)
            for _, why, raw in batch.rejects:
                self.calls[(_line_type(raw), "rejected", why[:300])] += 1

    def _claim_ids(self, batch: Parsed) -> set[str]:
        """Insert the batch's messageIds into raw.message_ids; return those that were new.

        While every id of the load has been new, the batch's ids are COPYed straight into
        raw.message_ids: the unique key checks them as it must anyway. Once that fails (an id
        was known: a client's retry, a day sent both ways), the load goes the careful way:
        one query probes the index for the batch's ids, and the rest are COPYed. If a
        concurrent load claimed one in between, that COPY fails on the unique key and the
        batch is claimed again with INSERT .. ON CONFLICT DO NOTHING, which waits for the other
        load's outcome.
        """
        conn = self.conn
        if not batch.ids:
            return set()
        conn.execute("select raw.ensure_event_partitions(%s::date[])", (sorted(batch.days),))
        if self.all_new:
            try:
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy(_COPY_IDS) as cp,
                ):
                    _write_chunked(cp, batch.keys)
                return set(batch.ids)
            except psycopg.errors.UniqueViolation:
                self.all_new = False
        # the known ones by index probes: a join of a temporary table hashed all of
        # raw.message_ids for each batch, which a stream of small loads paid again and again
        with conn.cursor() as cur:
            cur.execute(
                "select message_id from raw.message_ids where message_id = any(%s)", (batch.ids,)
            )
            known = {r[0] for r in cur.fetchall()}
            try:
                with (
                    conn.transaction(),
                    cur.copy(_COPY_IDS) as cp,
                ):
                    if known:
                        pairs = zip(batch.ids, batch.keys, strict=True)
                        _write_chunked(cp, (k for m, k in pairs if m not in known))
                    else:
                        _write_chunked(cp, batch.keys)
                return set(batch.ids) - known
            except psycopg.errors.UniqueViolation:
                log.info("a concurrent load claimed some messageIds; claiming with ON CONFLICT")
            days, loads = zip(*(k.rsplit("\t", 2)[1:] for k in batch.keys), strict=True)
            cur.execute(
                "insert into raw.message_ids (message_id, event_date, load_id)"
                " select * from unnest(%s::text[], %s::date[], %s::bigint[])"
                " on conflict (message_id) do nothing returning message_id",
                (batch.ids, list(days), [int(x) for x in loads]),
            )
            return {r[0] for r in cur.fetchall()}


def _blocks(path: Path, size: int, status: dict[str, str]) -> Iterator[tuple[bytes, int]]:
    """(block of whole lines, number of its first line); a damaged gzip ends the stream."""
    try:
        for first, block in iter_blocks(path, size):
            yield block, first
    except DamagedFile as exc:
        status["partial"] = str(exc)


def _load_lines(
    writer: _Writer,
    path: Path,
    res: FileResult,
    limits: Limits,
    batch_lines: int,
    fast: bool,
    pool: Executor | None,
    on_lines: Callable[[int], None] | None,
) -> None:
    """Validate blocks (in worker processes when a pool is given) and write them in order.

    Three things overlap: worker processes validate the next blocks, this thread drops
    in-file duplicates and gathers a batch, and a writer thread COPYs the previous batch
    (waiting on PostgreSQL, so it hardly holds the GIL). Only the writer thread touches the
    connection while a batch is in flight, and at most one is; memory stays bounded.
    """
    seen: set[str] = set()
    status: dict[str, str] = {}
    blocks = _blocks(path, BLOCK_BYTES, status)
    if pool is None:
        parsed: Iterator[Parsed] = (
            parse_block(b, n, limits, writer.load_id, fast) for b, n in blocks
        )
    else:
        # Parse a whole batch ahead, so workers stay busy while the writer flushes.
        lookahead = max(1, batch_lines * 700 // BLOCK_BYTES)
        parsed = _ordered(pool, blocks, limits, writer.load_id, fast, lookahead)
    batch = Parsed()
    with ThreadPoolExecutor(1, thread_name_prefix="crm-copy") as copier:
        in_flight: Future[None] | None = None
        for part in parsed:
            n = len(part.ids) + len(part.rejects)
            res.lines += n
            fresh = seen.isdisjoint(part.ids) and len(set(part.ids)) == len(part.ids)
            if fresh:
                seen.update(part.ids)
                batch.ids += part.ids
                batch.keys += part.keys
                batch.rows += part.rows
            else:
                for m, k, r in zip(part.ids, part.keys, part.rows, strict=True):
                    if m in seen:
                        res.duplicates += 1
                    else:
                        seen.add(m)
                        batch.ids.append(m)
                        batch.keys.append(k)
                        batch.rows.append(r)
            batch.days |= part.days
            batch.contacts += part.contacts
            batch.rejects += part.rejects
            size = len(batch.ids) + len(batch.rejects)
            idle = in_flight is None or in_flight.done()
            # Hand over as soon as the writer is idle (keeps PostgreSQL busy from the start);
            # wait for it only when a full batch is ready.
            if (idle and size >= MIN_FLUSH_LINES) or size >= batch_lines:
                if in_flight is not None:
                    in_flight.result()
                in_flight = copier.submit(writer.flush, batch)
                batch = Parsed()
            if on_lines:
                on_lines(n)
        if in_flight is not None:
            in_flight.result()
    writer.flush(batch)
    res.loaded = writer.loaded
    res.duplicates += writer.duplicates
    res.rejected = writer.rejected
    if "partial" in status:
        res.status, res.message = "partial", status["partial"]


def _ordered(
    pool: Executor,
    blocks: Iterator[tuple[bytes, int]],
    limits: Limits,
    load_id: int,
    fast: bool,
    lookahead: int,
) -> Iterator[Parsed]:
    """Results in input order, with up to ``lookahead`` + workers chunks parsed ahead."""
    in_flight: deque[Future[Parsed]] = deque()
    depth = max(2, getattr(pool, "_max_workers", 2) + 1) + lookahead
    for block, first_line in blocks:
        in_flight.append(pool.submit(parse_block, block, first_line, limits, load_id, fast))
        if len(in_flight) >= depth:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def ingest_file(
    path: Path,
    *,
    url: str,
    settings: Settings,
    source: str = "cli",
    fast: bool = True,
    pool: Executor | None = None,
    on_lines: Callable[[int], None] | None = None,
    conn: psycopg.Connection | None = None,
) -> FileResult:
    """Load one file in one transaction (see the module docstring for the guarantees), on
    ``conn`` when given (left open: a loader that loads many small files keeps one)."""
    started = time.perf_counter()
    res = FileResult(path=path, checksum=checksum(path))
    limits = limits_from(settings)
    try:
        opened = contextlib.nullcontext(conn) if conn is not None else db.connect(url)
        with opened as conn, conn.transaction():
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
            writer = _Writer(conn, path, res.checksum, load_id)
            _load_lines(
                writer, path, res, limits, settings.ingest_batch_lines, fast, pool, on_lines
            )
            if res.status == "running":
                res.status = "loaded"
            events, quarantined = drop_erased(conn, load_id)
            res.erased = events + quarantined
            res.loaded -= events
            res.rejected -= quarantined
            count_calls(conn, load_id, source, None if res.erased else writer.calls)
            conn.execute(
                "update raw.load_audit set lines = %s, loaded = %s, duplicates = %s,"
                " rejected = %s, erased = %s, status = %s, message = %s, finished_at = now()"
                " where load_id = %s",
                (
                    res.lines,
                    res.loaded,
                    res.duplicates,
                    res.rejected,
                    res.erased,
                    res.status,
                    res.message,
                    load_id,
                ),
            )
    except (psycopg.Error, OSError) as exc:
        # Nothing of this file was committed; record the failure so ops can see and retry.
        res.status, res.message = "failed", f"{type(exc).__name__}: {exc}".strip()
        res.lines = res.loaded = res.duplicates = res.rejected = res.erased = 0
        res.load_id = _record_failure(url, path, res, source)
    finally:
        res.seconds = time.perf_counter() - started
    return res


def _erased(*columns: str) -> str:
    """SQL: one of the row's id columns is tombstoned (alias ``e``)."""
    hashes = ", ".join(f"encode(sha256(convert_to(e.{c}, 'UTF8')), 'hex')" for c in columns)
    return f"exists (select 1 from crm.erased_identifiers t where t.identifier_hash in ({hashes}))"


# ids in a quarantined line, even one that is not JSON
_LINE_IDS = r'"(?:userId|anonymousId|previousId|user_id|anonymous_id)"\s*:\s*"([^"\\]*)"'


# The load's calls by type, and its rejected lines by type and reason, added to the minute the
# load commits in (the Live dashboard's per-minute counts); minutes older than 7 days go. The
# counts come from the load's writer; read back from the tables only when erased people's
# rows were dropped after writing (what is left is what counts).
_ADD_CALLS = """
insert into raw.call_minutes as kept (minute, source, type, outcome, reason, calls)
values (date_trunc('minute', now()), %s, %s, %s, %s, %s)
on conflict (minute, source, type, outcome, reason)
do update set calls = kept.calls + excluded.calls
"""
_STORED_CALLS = """
select type, 'accepted', '', count(*) from raw.events where load_id = %(load_id)s group by 1
union all
select coalesce(raw.line_field(line_text, 'type', 40), ''), 'rejected', left(reason, 300), count(*)
from raw.rejected_events where load_id = %(load_id)s group by 1, 2, 3
"""


def count_calls(
    conn: psycopg.Connection,
    load_id: int,
    source: str,
    calls: Counter[tuple[str, str, str]] | None = None,
) -> None:
    """Count the load's calls into raw.call_minutes, in the load's transaction (``calls`` by
    type, outcome and reason; None: read them back). Rows go in key order, so concurrent
    loads lock the same minute's rows without deadlocking."""
    name = source.removeprefix("collector:") if source.startswith("collector:") else "files"
    if calls is None:
        rows = conn.execute(_STORED_CALLS, {"load_id": load_id}).fetchall()
        calls = Counter({(t, o, r): n for t, o, r, n in rows})
    with conn.cursor() as cur:
        cur.executemany(_ADD_CALLS, [(name, *key, n) for key, n in sorted(calls.items()) if n])
    conn.execute("delete from raw.call_minutes where minute < now() - interval '7 days'")


def drop_erased(conn: psycopg.Connection, load_id: int) -> tuple[int, int]:
    """Delete what this load stored of people erased before (crm.erased_identifiers holds
    their SHA-256): their events, the personal traits taken out of those, and their
    quarantined lines (ids read from the line's text, even when it is not JSON). Returns
    (events, quarantined lines) dropped. Free when nobody was ever erased."""
    if not conn.execute("select exists (select 1 from crm.erased_identifiers)").fetchone()[0]:  # type: ignore[index]
        return 0, 0
    events = conn.execute(
        "delete from raw.events e where e.load_id = %s and "
        + _erased("user_id", "anonymous_id", "previous_id"),
        (load_id,),
    ).rowcount
    conn.execute(
        "delete from pii.contact_traits e where e.load_id = %s and "
        + _erased("user_id", "anonymous_id"),
        (load_id,),
    )
    rejected = conn.execute(
        """
        delete from raw.rejected_events r
        where r.load_id = %s and exists (
            select 1 from regexp_matches(r.line_text, %s, 'g') as m(ids)
            join crm.erased_identifiers t
              on t.identifier_hash = encode(sha256(convert_to(m.ids[1], 'UTF8')), 'hex'))
        """,
        (load_id, _LINE_IDS),
    ).rowcount
    return events, rejected


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


def _warm_up() -> None:
    """Runs in each new worker: importing this module is the slow part."""


def parse_pool(settings: Settings) -> ProcessPoolExecutor | None:
    """Worker processes that parse large files while the caller COPYs (CRM_INGEST_WORKERS;
    by default one fewer than the cores, at most 4); None when that is none. The caller shuts
    it down (``with pool:``)."""
    workers = settings.ingest_workers
    if workers is None:
        workers = min(max((os.cpu_count() or 1) - 1, 1), 4)
    if workers <= 0:
        return None
    # forkserver: workers start from a clean process, not from one holding connections.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
    for _ in range(workers):  # start the workers while the first file is checksummed
        pool.submit(_warm_up)
    return pool


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
    files = expand(paths)
    big = any(f.stat().st_size >= POOL_MIN_BYTES for f in files)
    results = []
    with ExitStack() as stack:
        pool = parse_pool(settings) if big else None
        if pool is not None:
            stack.enter_context(pool)
        for path in files:
            res = ingest_file(
                path,
                url=url,
                settings=settings,
                source=source,
                fast=fast,
                pool=pool if path.stat().st_size >= POOL_MIN_BYTES else None,
                on_lines=on_lines,
            )
            results.append(res)
            if on_file:
                on_file(res)
    return results
