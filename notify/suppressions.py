"""The suppression list: customers never to contact on a channel (or on all, ``*``), whatever
their consent. Planning leaves them out and sending re-checks, so an entry added between the
two still stops the message."""

from __future__ import annotations

import psycopg

CHANNELS = ("*", "push", "email", "telegram", "slack", "webhook")


def add(conn: psycopg.Connection, customer_id: str, reason: str, channel: str = "*") -> bool:
    """Suppress; returns False when the entry was already there (its reason is updated)."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}")
    if not reason.strip():
        raise ValueError("say why (the reason is kept with the entry)")
    row = conn.execute(
        "insert into crm.suppressions (customer_id, channel, reason) values (%s, %s, %s)"
        " on conflict (customer_id, channel) do update set reason = excluded.reason"
        " returning (xmax = 0)",
        (customer_id, channel, reason),
    ).fetchone()
    return bool(row and row[0])


def remove(conn: psycopg.Connection, customer_id: str, channel: str = "*") -> bool:
    cur = conn.execute(
        "delete from crm.suppressions where customer_id = %s and channel = %s",
        (customer_id, channel),
    )
    return cur.rowcount > 0


def entries(conn: psycopg.Connection) -> list[tuple[str, str, str, object]]:
    return conn.execute(
        "select customer_id, channel, reason, added_at from crm.suppressions order by added_at"
    ).fetchall()
