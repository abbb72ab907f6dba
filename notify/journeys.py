"""Event-triggered journeys: a campaign whose schedule names an event is evaluated as loads land.

Each step (``evaluate``), for each journey campaign, in one transaction per journey:

1. **Enter.** Every load committed since the journey started and not read by it yet is read
   once (``crm.journey_loads``): each of its calls of the trigger event that matches the
   property conditions becomes an entry (``crm.journey_entries``, keyed by the event's
   messageId, so an event enters once however often it is loaded or evaluated), due at the
   event's own time plus the wait. The load's exit events are kept (``crm.journey_exits``).
2. **Exit.** A waiting entry whose person (the same user id or anonymous id) did an exit event
   between the trigger and the end of the wait is marked exited, whichever arrived first: an
   order that reached us late, from a phone that was offline, still cancels the reminder.
3. **Plan.** Entries due by ``now`` are resolved to a customer (the user id, or the customer
   the device was stitched to, or the device's own anonymous customer) and planned through
   the campaign path every campaign takes (``notify.deliver.plan``): the holdout, the cap and
   cooldown, consent, the suppression list, quiet hours in the customer's zone and the
   campaign's send time; the message can use the event's properties as ``event``. The entries
   are marked planned in the transaction that writes their deliveries, so a restart repeats
   nothing. An entry more than ``max_late_hours`` past its due time (the journey was paused,
   or the event arrived days late) expires unsent; one whose customer the customer tables do
   not know yet waits for the next build until then.

Sending is the delivery path's own (``send_due``): the journeys process sends what is due after
each step, as ``send_campaigns`` does hourly.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from crm.errors import CrmError
from crm.settings import Settings, get_settings
from notify.audience import in_holdout
from notify.campaigns import Campaign, PropertyFilter
from notify.deliver import plan

log = logging.getLogger(__name__)

NEW_LOADS = """
    select a.load_id from raw.load_audit a
    join crm.journeys j on j.campaign_id = %(campaign)s
    where a.status in ('loaded', 'partial') and a.finished_at >= j.started_at
      and not exists (select 1 from crm.journey_loads r
                      where r.campaign_id = %(campaign)s and r.load_id = a.load_id)
    order by a.load_id
"""
# two joins, one per identifier, rather than one join on "same user id or same anonymous id":
# each probes its own index of crm.journey_exits, where the "or" would not. The trigger itself
# never exits its own entry (an order that starts a "no second order" journey)
EXIT_ENTRIES = """
    with hits as (
        select j.trigger_message_id, x.event, x.message_id, x.event_at
        from crm.journey_entries j
        join crm.journey_exits x
          on x.campaign_id = j.campaign_id and x.user_id = j.user_id
        where j.campaign_id = %(campaign)s and j.state = 'waiting'
          and x.event_at >= j.triggered_at and x.event_at <= j.due_at
          and x.message_id <> j.trigger_message_id
        union all
        select j.trigger_message_id, x.event, x.message_id, x.event_at
        from crm.journey_entries j
        join crm.journey_exits x
          on x.campaign_id = j.campaign_id and x.anonymous_id = j.anonymous_id
        where j.campaign_id = %(campaign)s and j.state = 'waiting'
          and x.event_at >= j.triggered_at and x.event_at <= j.due_at
          and x.message_id <> j.trigger_message_id
    ),
    first as (
        select distinct on (trigger_message_id) * from hits
        order by trigger_message_id, event_at, message_id
    )
    update crm.journey_entries j
    set state = 'exited', exit_event = f.event, exit_message_id = f.message_id,
        exited_at = f.event_at, decided_at = %(now)s
    from first f
    where j.campaign_id = %(campaign)s and j.trigger_message_id = f.trigger_message_id
    returning j.exit_event
"""
# due entries and who they are now: the user id, else the customer the device was stitched to
# (it logged in meanwhile), else the device's own anonymous customer
DUE_ENTRIES = """
    select j.trigger_message_id, j.triggered_at, j.due_at, j.properties,
           coalesce(j.user_id, s.customer_id, 'anon:' || j.anonymous_id) as customer_id
    from crm.journey_entries j
    left join intermediate.int_identities_stitched s on s.identifier = j.anonymous_id
    where j.campaign_id = %(campaign)s and j.state = 'waiting' and j.due_at <= %(now)s
    order by j.due_at, j.trigger_message_id
    limit %(limit)s
"""


@dataclass
class StepReport:
    """What one evaluation step did, per journey: loads read, entered, exited (by exit event),
    planned (by delivery state), expired, waiting now."""

    journeys: dict[str, Counter[str]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"journeys": {k: dict(v) for k, v in self.journeys.items()}, "sent": self.sent}


def is_journey(campaign: Campaign) -> bool:
    return campaign.schedule.kind == "trigger" and campaign.schedule.event is not None


def register(conn: psycopg.Connection, campaigns: list[Campaign]) -> None:
    """Start the journeys not known yet: they read loads that commit from now on."""
    with conn.cursor() as cur:
        cur.executemany(
            "insert into crm.journeys (campaign_id) values (%s) on conflict do nothing",
            [(c.id,) for c in campaigns if is_journey(c)],
        )


def set_paused(
    conn: psycopg.Connection, campaign_id: str | list[str], paused: bool, by: str = "cli"
) -> bool:
    """Pause or resume a journey (or several: a journey with its follow-up steps); False when
    none of them has started."""
    ids = [campaign_id] if isinstance(campaign_id, str) else campaign_id
    cur = conn.execute(
        "update crm.journeys set paused_at = case when %s then now() end,"
        " paused_by = case when %s then %s end where campaign_id = any(%s)",
        (paused, paused, by, ids),
    )
    return cur.rowcount > 0


def steps_of(campaigns: list[Campaign], journey: str) -> list[str]:
    """The campaign ids of a journey's steps (the journey's own first), or of the one step
    named."""
    ids = [c.id for c in campaigns if is_journey(c) and c.journey == journey]
    return ids or [c.id for c in campaigns if is_journey(c) and c.id == journey]


def _property(f: PropertyFilter) -> tuple[sql.Composable, list[Any]]:
    """One condition on the event's properties, every value bound."""
    prop = sql.SQL("(e.payload -> 'properties' -> %s)")
    if f.op == "exists":
        return sql.SQL("(e.payload -> 'properties') ? %s"), [f.property]
    if f.op in ("gt", "gte", "lt", "lte"):
        op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.op]
        return (
            sql.SQL("(case when jsonb_typeof({p}) = 'number' then ({p})::numeric end) {op} %s")
            .format(p=prop, op=sql.SQL(op)),
            [f.property, f.property, f.value],
        )  # fmt: skip
    if f.op == "in":
        return sql.SQL("{} = any(%s)").format(prop), [f.property, [Jsonb(v) for v in f.value]]
    if f.op == "ne":
        return sql.SQL("{} is distinct from %s").format(prop), [f.property, Jsonb(f.value)]
    return sql.SQL("{} = %s").format(prop), [f.property, Jsonb(f.value)]


def _conditions(where: list[PropertyFilter]) -> tuple[sql.Composable, list[Any]]:
    """`` and ...`` for each condition on the event's properties, and the values it binds."""
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for f in where:
        cond, values = _property(f)
        conds.append(cond)
        params += values
    return sql.SQL("").join(sql.SQL(" and ") + c for c in conds), params


def _enter(conn: psycopg.Connection, campaign: Campaign, loads: list[int]) -> tuple[int, int]:
    """Entries and exit events from ``loads``; (entered, exits seen)."""
    s = campaign.schedule
    where, values = _conditions(s.where)
    params: list[Any] = [campaign.id, s.wait_minutes, loads, s.event, *values]
    entered = conn.execute(
        sql.SQL(
            "insert into crm.journey_entries (campaign_id, trigger_message_id, user_id,"
            " anonymous_id, triggered_at, due_at, properties, load_id)"
            " select %s, e.message_id, e.user_id, e.anonymous_id, e.event_at,"
            " e.event_at + make_interval(mins => %s),"
            " coalesce(e.payload -> 'properties', '{{}}'), e.load_id"
            " from raw.events e where e.load_id = any(%s) and e.type = 'track'"
            " and e.event = %s{} on conflict do nothing"
        ).format(where),
        params,
    ).rowcount
    exits = 0
    if s.exit_events:
        exits = conn.execute(
            "insert into crm.journey_exits (campaign_id, message_id, event, user_id,"
            " anonymous_id, event_at)"
            " select %s, e.message_id, e.event, e.user_id, e.anonymous_id, e.event_at"
            " from raw.events e where e.load_id = any(%s) and e.type = 'track'"
            " and e.event = any(%s) on conflict do nothing",
            (campaign.id, loads, list(s.exit_events)),
        ).rowcount
    with conn.cursor() as cur:
        cur.executemany(
            "insert into crm.journey_loads (campaign_id, load_id) values (%s, %s)"
            " on conflict do nothing",
            [(campaign.id, load) for load in loads],
        )
    return entered, exits


def _plan_due(
    conn: psycopg.Connection,
    campaign: Campaign,
    now: datetime,
    settings: Settings,
    counts: Counter[str],
    limit: int,
) -> None:
    """Plan the due entries (one occurrence per step), expire the hopelessly late ones."""
    late = now - timedelta(hours=campaign.schedule.max_late_hours)
    expired = conn.execute(
        "update crm.journey_entries set state = 'expired', decided_at = %s,"
        " reason = coalesce(reason, 'more than max_late_hours past its due time')"
        " where campaign_id = %s and state = 'waiting' and due_at < %s",
        (now, campaign.id, late),
    ).rowcount
    if expired:
        counts["expired"] += expired
    due = conn.execute(
        "select exists (select 1 from crm.journey_entries where campaign_id = %s"
        " and state = 'waiting' and due_at <= %s)",
        (campaign.id, now),
    ).fetchone()
    if not due or not due[0]:  # nothing due: the customer tables are not needed (nor built)
        return
    rows = conn.execute(
        DUE_ENTRIES, {"campaign": campaign.id, "now": now, "limit": limit}
    ).fetchall()
    if not rows:
        return
    known = {
        r[0]
        for r in conn.execute(
            "select customer_id from marts.dim_customers where customer_id = any(%s)",
            ([r[4] for r in rows],),
        )
    }
    # the customer's first due entry of this step is planned; another of the same customer
    # in the same step counts as a repeat (the cap and cooldown decide the steps after)
    chosen: dict[str, tuple[str, dict[str, Any]]] = {}
    repeats, unknown = [], []
    for message_id, _, _, props, customer in rows:
        if customer not in known:
            unknown.append(message_id)
        elif customer in chosen:
            repeats.append((customer, message_id))
        else:
            chosen[customer] = (message_id, props)
    if unknown:
        conn.execute(
            "update crm.journey_entries set reason = 'customer not built yet; waiting for the"
            " next build' where campaign_id = %s and trigger_message_id = any(%s)",
            (campaign.id, unknown),
        )
        counts["not built yet"] += len(unknown)
    if not chosen and not repeats:
        return
    planned = plan(
        conn, campaign, now, settings, occurrence=now, only=list(chosen),
        context={c: {"event": p} for c, (_, p) in chosen.items()},
    )  # fmt: skip
    counts.update({f"planned {k}": v for k, v in planned.items()})
    # what each chosen customer got: a delivery of this occurrence, or none (capped, cooldown,
    # or no longer in the audience)
    got: dict[str, str] = dict(
        conn.execute(
            "select customer_id, state from crm.deliveries where campaign_id = %s"
            " and occurrence = %s and customer_id = any(%s)",
            (campaign.id, now, list(chosen)),
        ).fetchall()
    )
    with conn.cursor() as cur:
        cur.executemany(
            "update crm.journey_entries set state = 'planned', customer_id = %s,"
            " occurrence = %s, decided_at = %s, reason = %s"
            " where campaign_id = %s and trigger_message_id = %s",
            [(c, now if c in got else None, now,
              None if c in got else "not eligible: cap, cooldown or audience",
              campaign.id, m) for c, (m, _) in chosen.items()]
            + [(c, None, now, "another entry of the customer planned in the same step",
                campaign.id, m) for c, m in repeats],
        )  # fmt: skip
    counts["not eligible"] += len(chosen) - len(got)
    counts["repeat"] += len(repeats)


def step(
    url: str,
    campaigns: list[Campaign],
    now: datetime | None = None,
    settings: Settings | None = None,
    limit: int = 5_000,
) -> StepReport:
    """One evaluation of every journey in ``campaigns`` (others are ignored)."""
    settings = settings or get_settings()
    report = StepReport()
    journeys = [c for c in campaigns if is_journey(c)]
    with psycopg.connect(url) as conn:
        register(conn, journeys)
        conn.commit()
        at = now or datetime.now(UTC)
        paused = {
            r[0]
            for r in conn.execute(
                "select campaign_id from crm.journeys where paused_at is not null"
            )
        }
        for campaign in journeys:
            counts: Counter[str] = Counter()
            report.journeys[campaign.id] = counts
            if campaign.id in paused:
                counts["paused"] = 1
                continue
            if at.date() > campaign.end_date:
                continue
            with conn.transaction():
                # one evaluator per journey at a time (the lock ends with the transaction)
                conn.execute(
                    "select pg_advisory_xact_lock(hashtext('journey:' || %s))", (campaign.id,)
                )
                loads = [r[0] for r in conn.execute(NEW_LOADS, {"campaign": campaign.id})]
                if loads:
                    counts["loads"] += len(loads)
                    entered, exits = _enter(conn, campaign, loads)
                    counts["entered"] += entered
                    counts["exit events"] += exits
                for (event,) in conn.execute(EXIT_ENTRIES, {"campaign": campaign.id, "now": at}):
                    counts[f"exited on {event}"] += 1
                _plan_due(conn, campaign, at, settings, counts, limit)
            waiting = conn.execute(
                "select count(*) from crm.journey_entries where campaign_id = %s"
                " and state = 'waiting'",
                (campaign.id,),
            ).fetchone()
            counts["waiting"] = int(waiting[0]) if waiting else 0
            conn.commit()
    return report


BEHIND = """
    select j.campaign_id, count(a.load_id) from crm.journeys j
    join raw.load_audit a on a.status in ('loaded', 'partial') and a.finished_at >= j.started_at
      and a.finished_at < %(before)s
    where j.paused_at is null and j.campaign_id = any(%(ids)s)
      and not exists (select 1 from crm.journey_loads r
                      where r.campaign_id = j.campaign_id and r.load_id = a.load_id)
    group by 1
"""


def control(
    url: str,
    campaigns: list[Campaign],
    pause: list[str] | tuple[str, ...] = (),
    resume: list[str] | tuple[str, ...] = (),
    by: str = "airflow",
    stalled_minutes: float = 10,
) -> dict[str, dict[str, Any]]:
    """Pause and resume journeys (each with its steps), then each started journey step's state:
    paused or running, its entries by state, and the loads older than ``stalled_minutes`` it
    has not read yet (more than none: the journeys process is not running, or is stuck)."""
    journeys = [c for c in campaigns if is_journey(c)]
    unknown = sorted({*pause, *resume} - {c.journey for c in journeys} - {c.id for c in journeys})
    if unknown:
        raise CrmError(f"no journey {unknown}; have {sorted({c.journey for c in journeys})}")
    ids = [c.id for c in journeys]
    with psycopg.connect(url) as conn:
        for name in pause:
            set_paused(conn, steps_of(journeys, name), True, by=by)
        for name in resume:
            set_paused(conn, steps_of(journeys, name), False, by=by)
        out: dict[str, dict[str, Any]] = {}
        for cid, paused, state, n in conn.execute(
            "select j.campaign_id, j.paused_at is not null, e.state, count(e.*)"
            " from crm.journeys j left join crm.journey_entries e using (campaign_id)"
            " where j.campaign_id = any(%s) group by 1, 2, 3",
            (ids,),
        ):
            row = out.setdefault(cid, {"paused": paused, "entries": {}, "loads behind": 0})
            if state:
                row["entries"][state] = n
        before = datetime.now(UTC) - timedelta(minutes=stalled_minutes)
        for cid, n in conn.execute(BEHIND, {"before": before, "ids": ids}):
            out[cid]["loads behind"] = n
    return out


def preview(
    conn: psycopg.Connection, campaign: Campaign, hours: float, now: datetime
) -> list[dict[str, Any]]:
    """Who would have entered the journey from the events of the ``hours`` before ``now`` (by
    the events' own time), and where each would stand at ``now``: one row per trigger event with
    its customer, ``exited`` (an exit event by the same person between the trigger and the end of
    the wait, as far as it happened by ``now``), ``due`` (the wait is over), ``known`` (in the
    built customer tables) and ``held_out``. Nothing is recorded."""
    s = campaign.schedule
    since = now - timedelta(hours=hours)
    where, values = _conditions(s.where)
    params: list[Any] = [s.wait_minutes, since, now, s.event, *values, since, now,
                         list(s.exit_events)]  # fmt: skip
    rows = conn.execute(
        sql.SQL(
            "with t as materialized (select e.message_id, e.user_id, e.anonymous_id,"
            "  e.event_at, e.event_at + make_interval(mins => %s) as due_at,"
            "  coalesce(e.payload -> 'properties', '{{}}') as properties from raw.events e"
            "  where e.event_at between %s and %s and e.type = 'track' and e.event = %s{}),"
            " x as materialized (select e.message_id, e.user_id, e.anonymous_id, e.event_at"
            "  from raw.events e where e.event_at between %s and %s and e.type = 'track'"
            "  and e.event = any(%s)),"
            " p as (select t.*, coalesce(t.user_id, s.customer_id, 'anon:' || t.anonymous_id)"
            "  as customer_id from t left join intermediate.int_identities_stitched s"
            "  on s.identifier = t.anonymous_id)"
            " select p.message_id, p.event_at, p.due_at, p.customer_id, p.properties,"
            "  exists (select 1 from x where x.message_id <> p.message_id"
            "   and x.event_at between p.event_at and p.due_at and x.user_id = p.user_id)"
            "  or exists (select 1 from x where x.message_id <> p.message_id"
            "   and x.event_at between p.event_at and p.due_at"
            "   and x.anonymous_id = p.anonymous_id),"
            "  exists (select 1 from marts.dim_customers c where c.customer_id = p.customer_id)"
            " from p order by p.event_at"
        ).format(where),
        params,
    ).fetchall()
    return [
        {"message_id": m, "event_at": at, "due_at": due, "customer_id": c, "properties": props,
         "exited": x, "known": k, "due": due <= now,
         "held_out": in_holdout(campaign.journey, c, campaign.holdout_percent)}
        for m, at, due, c, props, x, k in rows
    ]  # fmt: skip


def dry_run(
    conn: psycopg.Connection,
    campaign: Campaign,
    now: datetime,
    settings: Settings,
    hours: float = 24,
) -> Counter[str]:
    """What the journey would plan from the events of the ``hours`` before ``now``: each
    customer's first entry that no exit event cancelled is planned as one occurrence at
    ``now``, through the campaign path (holdout, cap, cooldown, consent, suppression list,
    quiet hours), with the event's properties in the message. Writes deliveries: call it in a
    transaction that is rolled back. The counts add the entries and the exited ones."""
    rows = preview(conn, campaign, hours, now)
    counts: Counter[str] = Counter(entries=len(rows), exited=sum(r["exited"] for r in rows))
    chosen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if not r["exited"] and r["known"]:
            chosen.setdefault(r["customer_id"], r["properties"])
    counts["not built yet"] = sum(not r["known"] for r in rows)
    if chosen:
        context = {c: {"event": p} for c, p in chosen.items()}
        counts.update(
            plan(conn, campaign, now, settings, occurrence=now, only=list(chosen), context=context)
        )
    return +counts
