"""``crm tail``: calls as they arrive, accepted or quarantined with the reason (a debugger for
the shop's developers, like Segment's). Reads the loads committed after it started."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from crm import db


@dataclass(frozen=True)
class Call:
    loaded_at: datetime
    source: str
    load_id: int
    type: str | None
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    message_id: str | None
    rejected: str | None  # the reason, for a quarantined line


def latest_load(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "select coalesce(max(load_id), 0) from raw.load_audit where status <> 'running'"
    ).fetchone()
    return int(row[0]) if row else 0


def calls_after(
    conn: psycopg.Connection, after: int, source: str | None = None, limit: int = 1000
) -> tuple[list[Call], int]:
    """The calls of loads finished after load ``after`` (of one source: ``collector:NAME``
    or the load's own source), and the newest load read."""
    loads = conn.execute(
        "select load_id, source, finished_at from raw.load_audit where load_id > %s"
        " and finished_at is not null and (%s::text is null or source = %s"
        " or source = 'collector:' || %s) order by load_id limit 50",
        (after, source, source, source),
    ).fetchall()
    if not loads:
        return [], after
    ids = [r[0] for r in loads]
    meta = {r[0]: (r[1], r[2]) for r in loads}
    out: list[Call] = []
    for load_id, type_, event, user, anon, message in conn.execute(
        "select load_id, type, event, user_id, anonymous_id, message_id from raw.events"
        " where load_id = any(%s) order by load_id, line_number limit %s",
        (ids, limit),
    ):
        src, at = meta[load_id]
        out.append(Call(at, src, load_id, type_, event, user, anon, message, None))
    for load_id, line, reason in conn.execute(
        "select load_id, left(line_text, 300), reason from raw.rejected_events"
        " where load_id = any(%s) order by load_id, line_number limit %s",
        (ids, limit),
    ):
        src, at = meta[load_id]
        out.append(Call(at, src, load_id, None, None, None, None, line, reason))
    out.sort(key=lambda c: c.load_id)
    return out, max(ids)


def follow(
    show: Callable[[Call], None],
    source: str | None = None,
    url: str | None = None,
    poll_seconds: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    with db.connect(url or db.database_url(), autocommit=True) as conn:
        after = latest_load(conn)
        while not stop():
            calls, after = calls_after(conn, after, source)
            for c in calls:
                show(c)
            if not calls:
                time.sleep(poll_seconds)
