"""The data subject's rights: access (export everything held about a person) and erasure
(remove them everywhere, for good).

A person is every identifier stitched to them: their customer id, the user ids and the
anonymous device ids that ``int_identities_stitched`` maps to that customer. Tables are found
by their columns, not listed by hand, so a model added later is covered: every base table in
the pipeline's schemas with a ``customer_id``, ``user_id``, ``anonymous_id``, ``previous_id``
or ``identifier`` column.

Erasure runs in one transaction (a crash leaves everything as it was; run it again), then
clears Redis. It deletes the person's raw and rejected events, ``pii``, every mart and
intermediate table (incremental models included), ``ml.*``, campaign audiences, addresses and
suppressions, and empties Superset's chart cache; delivery-log rows are kept for the
campaigns' aggregate counts but anonymised (customer id replaced, message text removed). It
records a tombstone per identifier (SHA-256 only) so that no later load brings the person
back. Idempotent.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SCHEMAS = ("raw", "staging", "intermediate", "marts", "snapshots", "pii", "ml", "crm")
ID_COLUMNS = ("customer_id", "user_id", "anonymous_id", "previous_id", "identifier")
# kept but anonymised (aggregate counts stay right); tombstones are the point
ANONYMISED = {("crm", "deliveries")}
SKIPPED = {("crm", "erased_identifiers"), ("raw", "message_ids")}


def digest(identifier: str) -> str:
    return hashlib.sha256(identifier.encode()).hexdigest()


@dataclass
class Person:
    customer_id: str
    identifiers: list[str] = field(default_factory=list)


def resolve(conn: psycopg.Connection, any_id: str) -> Person:
    """The customer behind ``any_id`` (a customer, user or anonymous id) and all their ids."""
    ids = {any_id}
    customer = any_id
    if conn.execute("select to_regclass('intermediate.int_identities_stitched')").fetchone()[0]:  # type: ignore[index]
        row = conn.execute(
            "select customer_id from intermediate.int_identities_stitched where identifier = %s",
            (any_id,),
        ).fetchone()
        customer = row[0] if row else any_id
        ids |= {customer}
        ids |= {
            r[0]
            for r in conn.execute(
                "select identifier from intermediate.int_identities_stitched"
                " where customer_id = %s",
                (customer,),
            ).fetchall()
        }
    # raw events link ids too (alias previous_id, a logged-in device) before dbt has run
    ids |= {
        v
        for r in conn.execute(
            "select distinct user_id, anonymous_id, previous_id from raw.events"
            " where user_id = any(%(ids)s) or anonymous_id = any(%(ids)s)"
            " or previous_id = any(%(ids)s)",
            {"ids": sorted(ids)},
        ).fetchall()
        for v in r
        if v
    }
    return Person(customer, sorted(ids))


def person_tables(conn: psycopg.Connection) -> list[tuple[str, str, list[str]]]:
    """(schema, table, identifier columns) of every base table that can hold a person. Read
    from the catalog, not information_schema, which hides tables the role may not read: a
    table the role lacks rights on is then an error, never silently skipped."""
    rows = conn.execute(
        """
        select n.nspname::text, c.relname::text, array_agg(a.attname::text order by a.attname)
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
        where n.nspname = any(%s) and a.attname = any(%s)
          and c.relkind in ('r', 'p')
          and not exists (select 1 from pg_inherits i where i.inhrelid = c.oid)
        group by 1, 2 order by 1, 2
        """,
        (list(SCHEMAS), list(ID_COLUMNS)),
    ).fetchall()
    return [(s, t, cols) for s, t, cols in rows if (s, t) not in SKIPPED]


def _where(cols: list[str]) -> sql.Composed:
    return sql.SQL(" or ").join(
        sql.SQL("{} = any(%(ids)s)").format(sql.Identifier(c)) for c in cols
    )


def _json(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes | memoryview):
        return bytes(v).decode("utf-8", "backslashreplace")
    return v


def export(
    conn: psycopg.Connection, any_id: str, redis: Any = None, prefix: str = "crm"
) -> dict[str, Any]:
    """Everything held about the person, as one JSON-ready document."""
    person = resolve(conn, any_id)
    out: dict[str, Any] = {
        "customer_id": person.customer_id,
        "identifiers": person.identifiers,
        "exported_at": datetime.now().astimezone().isoformat(),
        "tables": {},
    }
    for schema, table, cols in person_tables(conn):
        query = sql.SQL("select to_jsonb(t) from {} t where ").format(sql.Identifier(schema, table))
        rows = [r[0] for r in conn.execute(query + _where(cols), {"ids": person.identifiers})]
        if rows:
            out["tables"][f"{schema}.{table}"] = rows
    rejected = conn.execute(
        "select rejected_at, reason, line_text from raw.rejected_events"
        " where line_text like any(%s)",
        ([f"%{i}%" for i in person.identifiers],),
    ).fetchall()
    if rejected:
        out["tables"]["raw.rejected_events"] = [
            {"rejected_at": _json(a), "reason": b, "line": c} for a, b, c in rejected
        ]
    if redis is not None:
        key = f"{prefix}:customer:{person.customer_id}"
        value = redis.get(key)
        if value:
            out["redis"] = {key: json.loads(value)}
    return out


@dataclass
class Erased:
    customer_id: str
    identifiers: int
    rows: Counter[str]
    redis_keys: int
    dashboard_cache_keys: int = 0
    export_files: int = 0  # copies of earlier access requests' exports, deleted from disk


SUPERSET_CACHE_KEYS = "superset_*"  # CACHE_KEY_PREFIX of both caches in superset_config.py


def dashboard_cache(settings: Any) -> Any:
    """A client of the Redis Superset caches chart data in, or None when it does not cache."""
    if not settings.superset_cache_url:
        return None
    import redis

    return redis.Redis.from_url(settings.superset_cache_url)


def erase(
    conn: psycopg.Connection,
    any_id: str,
    redis: Any = None,
    prefix: str = "crm",
    dashboard_cache: Any = None,
) -> Erased:
    """Remove the person everywhere and tombstone their identifiers (see the module doc).

    ``dashboard_cache``: Superset's Redis; its cached chart data (which may show the person)
    is emptied, so every dashboard queries the database again."""
    removed: Counter[str] = Counter()
    with conn.transaction():
        person = resolve(conn, any_id)
        ids = person.identifiers
        # their device tokens were personal too
        if conn.execute("select to_regclass('marts.push_devices')").fetchone()[0]:  # type: ignore[index]
            cur = conn.execute(
                "delete from crm.invalid_tokens where token in (select push_token from"
                " marts.push_devices where customer_id = any(%s))",
                (ids,),
            )
            removed["crm.invalid_tokens"] += cur.rowcount
        for schema, table, cols in person_tables(conn):
            name = sql.Identifier(schema, table)
            if (schema, table) in ANONYMISED:
                cur = conn.execute(
                    sql.SQL(
                        "update {} set customer_id = 'erased-' || delivery_id, title = null,"
                        " body = null, link = null where "
                    ).format(name)
                    + _where(cols),
                    {"ids": ids},
                )
            else:
                cur = conn.execute(
                    sql.SQL("delete from {} where ").format(name) + _where(cols), {"ids": ids}
                )
            if cur.rowcount:
                removed[f"{schema}.{table}"] += cur.rowcount
        cur = conn.execute(
            "delete from raw.rejected_events where line_text like any(%s)",
            ([f"%{i}%" for i in ids],),
        )
        removed["raw.rejected_events"] += cur.rowcount
        # their earlier requests keep only the hash; exports made for them leave the disk
        requests = conn.execute(
            "update crm.privacy_requests set subject = null,"
            " status = case when status = 'pending' and kind = 'export' then 'failed'"
            " else status end,"
            " result = case when status = 'pending' and kind = 'export'"
            " then 'the subject was erased first' else result end"
            " where subject = any(%s) returning kind, status, result",
            (ids,),
        ).fetchall()
        removed["crm.privacy_requests (subject removed)"] += len(requests)
        files = [Path(r) for k, s, r in requests if k == "export" and s == "done" and r]
        with conn.cursor() as c:
            c.executemany(
                "insert into crm.erased_identifiers (identifier_hash) values (%s)"
                " on conflict do nothing",
                [(digest(i),) for i in ids],
            )
    keys = 0
    if redis is not None:
        for pattern in (f"{prefix}:customer:{i}" for i in ids):
            keys += int(redis.delete(pattern))
        for i in ids:
            for key in redis.scan_iter(f"{prefix}:cap:{i}:*"):
                keys += int(redis.delete(key))
    deleted = 0
    for path in files:
        if path.suffix == ".json" and path.is_file():
            path.unlink()
            deleted += 1
    cached = 0
    if dashboard_cache is not None:
        for key in dashboard_cache.scan_iter(SUPERSET_CACHE_KEYS, count=1000):
            cached += int(dashboard_cache.delete(key))
    return Erased(person.customer_id, len(ids), +removed, keys, cached, deleted)


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, default=str)


def apply_retention(conn: psycopg.Connection, keep_days: int, today: date) -> dict[str, int]:
    """Drop every raw.events day partition older than ``keep_days`` (a partition drop: no
    row-by-row delete, no bloat), delete quarantined lines as old, old contact details a
    newer value replaced, and the rows as old in dbt's incremental tables (staging and
    intermediate: they would otherwise keep what raw forgot). The marts are rebuilt from
    those at the next build."""
    cutoff = today.toordinal() - keep_days
    dropped = 0
    with conn.transaction():
        parts = conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
            " join pg_class p on p.oid = i.inhparent join pg_namespace n on n.oid = p.relnamespace"
            " where n.nspname = 'raw' and p.relname = 'events' and c.relname ~ '^events_[0-9]{8}$'"
        ).fetchall()
        for (name,) in parts:
            day = datetime.strptime(name.removeprefix("events_"), "%Y%m%d").date()
            if day.toordinal() < cutoff:
                conn.execute(sql.SQL("drop table {}").format(sql.Identifier("raw", name)))
                dropped += 1
        rejected = conn.execute(
            "delete from raw.rejected_events where rejected_at < %s::date - %s",
            (today, keep_days),
        ).rowcount
        # contact details: an old value goes once a newer one of the same trait replaced it
        # (the latest e-mail stays while the customer does: campaigns need it)
        superseded = conn.execute(
            """
            delete from pii.contact_traits c
            where c.event_at < %s::date - %s
              and not exists (
                select 1 from jsonb_object_keys(c.traits) k
                where not exists (
                    select 1 from pii.contact_traits n
                    where n.event_at > c.event_at and n.traits ? k
                      and (n.user_id = c.user_id or n.anonymous_id = c.anonymous_id)))
            """,
            (today, keep_days),
        ).rowcount
        derived = 0
        for schema, table, column in derived_event_tables(conn):
            bound = (
                "%s::date" if column == "event_date" else "%s::date::timestamp at time zone 'UTC'"
            )
            derived += conn.execute(
                sql.SQL("delete from {} where {} < " + bound).format(
                    sql.Identifier(schema, table), sql.Identifier(column)
                ),
                (date.fromordinal(cutoff),),
            ).rowcount
    return {
        "partitions_dropped": dropped,
        "rejected_deleted": rejected,
        "contact_traits_superseded": superseded,
        "derived_rows_deleted": derived,
    }


# the time column that ages a row of a derived table, most specific first
AGE_COLUMNS = ("event_date", "event_at", "started_at", "token_seen_at")


# incremental marts with one row per event-like thing (the other marts are rebuilt from
# staging and intermediate, or, like consent history, must keep old rows)
INCREMENTAL_MARTS = (("marts", "fct_orders", "ordered_at"), ("marts", "fct_sessions", "started_at"))


def derived_event_tables(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """dbt's tables in staging and intermediate with a column saying when their rows
    happened, and the incremental marts of orders and sessions: (schema, table, column).
    The other marts are rebuilt from these."""
    rows = conn.execute(
        "select n.nspname::text, c.relname::text, a.attname::text from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace"
        " join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped"
        " where n.nspname in ('staging', 'intermediate') and c.relkind in ('r', 'p')"
        " and a.attname = any(%s) order by 1, 2",
        (list(AGE_COLUMNS),),
    ).fetchall()
    best: dict[tuple[str, str], str] = {}
    for schema, table, column in rows:
        key = (schema, table)
        if key not in best or AGE_COLUMNS.index(column) < AGE_COLUMNS.index(best[key]):
            best[key] = column
    marts = [
        (schema, table, column)
        for schema, table, column in INCREMENTAL_MARTS
        if conn.execute("select to_regclass(%s)", (f"{schema}.{table}",)).fetchone()[0]  # type: ignore[index]
    ]
    return [(schema, table, column) for (schema, table), column in sorted(best.items())] + marts


def submit(conn: psycopg.Connection, kind: str, subject: str, requested_by: str) -> int:
    """Queue a request; returns its id."""
    if kind not in ("export", "erase"):
        raise ValueError("kind is export or erase")
    if not subject.strip():
        raise ValueError("say whose data (a customer, user or anonymous id)")
    row = conn.execute(
        "insert into crm.privacy_requests (kind, subject, subject_hash, requested_by)"
        " values (%s, %s, %s, %s) returning request_id",
        (kind, subject, digest(subject), requested_by),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def process_pending(
    url: str, out_dir: Path, redis: Any = None, prefix: str = "crm", dashboard_cache: Any = None
) -> Counter[str]:
    """Work off every pending request, each in its own transaction (one worker at a time: the
    DAG runs with max_active_runs=1); exports are written to
    ``out_dir/request-<id>.json`` (mode 0600). Returns counts only (no identifiers)."""
    done: Counter[str] = Counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(url) as conn:
        pending = conn.execute(
            "select request_id, kind, subject from crm.privacy_requests"
            " where status = 'pending' order by request_id"
        ).fetchall()
        conn.commit()
        for request_id, kind, subject in pending:
            try:
                if kind == "export":
                    path = out_dir / f"request-{request_id}.json"
                    path.write_text(to_json(export(conn, subject, redis, prefix)))
                    path.chmod(0o600)
                    result = str(path)
                else:
                    erased = erase(conn, subject, redis, prefix, dashboard_cache)
                    result = (
                        f"{sum(erased.rows.values())} rows, {erased.redis_keys} redis keys,"
                        f" {erased.dashboard_cache_keys} dashboard cache keys"
                    )
                conn.execute(
                    "update crm.privacy_requests set status = 'done', done_at = now(),"
                    " result = %s, subject = case when kind = 'erase' then null else subject"
                    " end where request_id = %s",
                    (result, request_id),
                )
                conn.commit()
                done[kind] += 1
            except (psycopg.Error, OSError) as exc:
                conn.rollback()
                conn.execute(
                    "update crm.privacy_requests set status = 'failed', result = %s"
                    " where request_id = %s",
                    (type(exc).__name__, request_id),
                )
                conn.commit()
                done["failed"] += 1
    return done
