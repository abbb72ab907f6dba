"""What landed: the figures `crm status` and the demo print."""

from __future__ import annotations

from dataclasses import dataclass, field

from crm import db
from crm.errors import DatabaseError

FILES_SQL = """
select status, count(*), coalesce(sum(lines), 0), coalesce(sum(loaded), 0),
       coalesce(sum(duplicates), 0), coalesce(sum(rejected), 0)
from raw.load_audit group by status order by status
"""
EVENTS_SQL = """
select count(*), min(event_date), max(event_date),
       count(distinct coalesce(user_id, 'anon:' || anonymous_id)),
       count(distinct user_id)
from raw.events
"""
TYPES_SQL = """
select coalesce(case when type = 'track' then event end, type) as kind, count(*)
from raw.events group by 1 order by 2 desc limit %s
"""
REASONS_SQL = """
select regexp_replace(
           case when reason like 'contract:%%'
                then 'contract:' || split_part(reason, ':', 2)
                else split_part(reason, ':', 1) end,
           ' \\d[\\d,]*', ' N', 'g') as reason,
       count(*)
from raw.rejected_events group by 1 order by 2 desc limit %s
"""


@dataclass
class Status:
    files: list[tuple[str, int, int, int, int, int]] = field(default_factory=list)
    events: int = 0
    first_day: str | None = None
    last_day: str | None = None
    identities: int = 0
    users: int = 0
    kinds: list[tuple[str, int]] = field(default_factory=list)
    reasons: list[tuple[str, int]] = field(default_factory=list)


def status(url: str | None = None, top: int = 8) -> Status:
    with db.connect(url) as conn:
        db.require_migrated(conn)
        s = Status()
        s.files = [tuple(r) for r in conn.execute(FILES_SQL)]
        events, first, last, identities, users = conn.execute(EVENTS_SQL).fetchone()  # type: ignore[misc]
        s.events, s.identities, s.users = events, identities, users
        s.first_day, s.last_day = (str(first) if first else None), (str(last) if last else None)
        s.kinds = [tuple(r) for r in conn.execute(TYPES_SQL, (top,))]
        s.reasons = [tuple(r) for r in conn.execute(REASONS_SQL, (top,))]
    return s


SEGMENTS_SQL = """
select lifecycle_segment, count(*) as customers,
       count(*) filter (where is_known) as known,
       count(*) filter (where push_consent) as push_consent,
       coalesce(sum(revenue), 0) as revenue
from marts.dim_customers
group by lifecycle_segment
order by array_position(array['new', 'active', 'buyer', 'repeat_buyer', 'inactive', 'lost'],
                        lifecycle_segment::text)
"""
MOVES_SQL = """
with bounds as (select max(day) as last from marts.customer_segments_daily)
select before.lifecycle_segment, after.lifecycle_segment, count(*)
from marts.customer_segments_daily before
join marts.customer_segments_daily after using (customer_id)
cross join bounds
where before.day = bounds.last - %s and after.day = bounds.last
  and before.lifecycle_segment <> after.lifecycle_segment
group by 1, 2 order by 3 desc limit 8
"""


def segments(url: str | None = None, days: int = 7) -> tuple[list[tuple], list[tuple]]:
    """Lifecycle segment sizes today, and the biggest moves over the last ``days`` days."""
    with db.connect(url) as conn:
        if conn.execute("select to_regclass('marts.dim_customers')").fetchone() == (None,):
            raise DatabaseError("no customer tables yet: run `crm transform` first")
        sizes = conn.execute(SEGMENTS_SQL).fetchall()
        moves = conn.execute(MOVES_SQL, (days,)).fetchall()
    return sizes, moves
