"""Delivery: plan each audience member's send slot, then claim-then-send in batches.

``plan`` writes one ``crm.deliveries`` row per member (planned, held_out or suppressed with a
reason); the unique key (campaign, customer, channel, slot) and "no row yet for this campaign
and customer" make re-planning harmless. ``send_due`` claims due rows (state 'sending', in a
committed transaction, ``for update skip locked`` so workers never share a row), sends them,
and records each outcome in another transaction. A worker that dies after claiming leaves
rows in 'sending'; once their lease (CRM_SEND_LEASE_SECONDS) expires they are claimed again,
so nothing planned is forgotten. The one window left is a crash after FCM accepted a batch and
before its outcome is committed: those messages are sent again, each carrying the same
``data.delivery_id`` so the app shows it once (FCM has no idempotency key).

Global rules live in settings: quiet hours in the customer's zone, push caps per day and week
(Redis counters), consent re-checked at send time.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import redis
from croniter import croniter
from psycopg.types.json import Jsonb

from crm.settings import Settings, get_settings
from notify.audience import snapshot_audience, triggered
from notify.campaigns import Campaign, pick_message, render
from notify.channels import AppriseSender, Note
from notify.fcm import FcmSender, Push

PLAN_QUERY = """
    select m.customer_id, m.held_out, c.time_zone, c.locale, c.push_consent, c.email_consent,
           c.lifecycle_segment, s.segment_id, s.segment_name, f.top_category,
           st.best_hour, st.best_channel,
           exists (select 1 from marts.push_devices d
                   where d.customer_id = m.customer_id and d.is_valid
                     and d.push_token not in (select token from crm.invalid_tokens)) as has_token,
           exists (select 1 from pii.customer_pii p
                   where p.customer_id = m.customer_id and p.email is not null) as has_email,
           array(select a.channel from crm.channel_addresses a
                 where a.customer_id = m.customer_id) as registered,
           array(select x.channel from crm.suppressions x
                 where x.customer_id = m.customer_id) as suppressed_on,
           array(select coalesce(p.product_name, r.product_id) from ml.recommendations r
                 left join marts.dim_products p on p.product_id = r.product_id
                 where r.customer_id = m.customer_id order by r.rank limit 3) as products
    from crm.campaign_audiences m
    join marts.dim_customers c on c.customer_id = m.customer_id
    left join marts.customer_features f on f.customer_id = m.customer_id
    left join ml.customer_segments s on s.customer_id = m.customer_id
    left join ml.send_times st on st.customer_id = m.customer_id
    where m.campaign_id = %(campaign)s and m.occurrence = %(occurrence)s
      and not exists (select 1 from crm.deliveries d
                      where d.campaign_id = m.campaign_id and d.customer_id = m.customer_id
                        and d.occurrence = m.occurrence)
"""
CLAIM = """
    with expired as (  -- a worker died holding these: its lease is over
        select delivery_id, slot from crm.deliveries
        where state = 'sending' and claimed_at < %(now)s - make_interval(secs => %(lease)s)
        order by slot, delivery_id
        limit %(limit)s
        for update skip locked
    ), planned as (
        select delivery_id, slot from crm.deliveries
        where state = 'planned' and slot <= %(now)s
        order by slot, delivery_id
        limit %(limit)s
        for update skip locked
    ), due as (
        select delivery_id from (select * from expired union all select * from planned) d
        order by slot, delivery_id
        limit %(limit)s
    )
    update crm.deliveries d
    set state = 'sending', claimed_at = %(now)s, attempts = d.attempts + 1, updated_at = now()
    from due where d.delivery_id = due.delivery_id
    returning d.delivery_id, d.customer_id, d.channel, d.attempts, d.title, d.body, d.link
"""
# what a send needs that may have changed since planning: consent, token, address, zone
SEND_INFO = """
    select c.customer_id, c.push_consent, c.email_consent, c.time_zone,
           (select d.push_token || '|' || d.platform from marts.push_devices d
            where d.customer_id = c.customer_id and d.is_valid
              and d.push_token not in (select token from crm.invalid_tokens)
            order by d.token_seen_at desc limit 1) as push_target,
           (select p.email from pii.customer_pii p where p.customer_id = c.customer_id) as email,
           coalesce((select jsonb_object_agg(a.channel, a.address) from crm.channel_addresses a
                     where a.customer_id = c.customer_id), '{}'::jsonb) as addresses,
           array(select x.channel from crm.suppressions x
                 where x.customer_id = c.customer_id) as suppressed_on
    from marts.dim_customers c
    where c.customer_id = any(%s)
"""


NOT_CONFIGURED = "FCM is not configured: set CRM_FCM_CREDENTIALS_FILE (and CRM_FCM_PROJECT_ID)"
log = logging.getLogger(__name__)


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def send_hour(campaign: Campaign, best_hour: int | None, quiet: tuple[int, int]) -> int:
    """The local hour to send at: fixed, or the customer's best hour kept inside the campaign's
    window; then out of the quiet hours."""
    st = campaign.send_time
    if st.mode == "fixed":
        hour = st.hour if st.hour is not None else 10
    else:
        lo, hi = st.window
        hour = best_hour if best_hour is not None and lo <= best_hour < hi else lo
    return quiet[1] if in_quiet_hours(hour, quiet) else hour


def in_quiet_hours(hour: int, quiet: tuple[int, int]) -> bool:
    q_from, q_to = quiet
    return (q_from <= hour or hour < q_to) if q_from > q_to else (q_from <= hour < q_to)


def immediate_slot(now: datetime, tz: ZoneInfo, quiet: tuple[int, int]) -> datetime:
    """``now``, unless the customer's clock is in the quiet hours: then the morning after them."""
    if in_quiet_hours(now.astimezone(tz).hour, quiet):
        return next_slot(now, tz, quiet[1])
    return now.astimezone(UTC)


def next_slot(now: datetime, tz: ZoneInfo, hour: int) -> datetime:
    """The next time (at or after ``now``) the customer's clock shows ``hour``:00, in UTC."""
    local = now.astimezone(tz)
    candidate = datetime(local.year, local.month, local.day, hour, tzinfo=tz)
    if candidate < local:
        nxt = local.date() + timedelta(days=1)
        candidate = datetime(nxt.year, nxt.month, nxt.day, hour, tzinfo=tz)
    return candidate.astimezone(UTC)


def choose_channel(
    campaign: Campaign, row: dict[str, Any], available: set[str] | None = None
) -> str | None:
    """The customer's best channel if the campaign allows it and they can get it, else the
    campaign's first usable channel; None when consent or an address is missing for all.
    Channels outside ``available`` (no apprise URL configured) are never chosen."""
    usable = []
    blocked = set(row.get("suppressed_on") or [])
    for ch in campaign.channels:
        if (available is not None and ch not in available) or {ch, "*"} & blocked:
            ok = False
        elif ch == "push":
            ok = row["push_consent"] and row["has_token"]
        elif ch == "email":
            ok = row["email_consent"] and row["has_email"]
        else:  # registering an address for the channel is the opt-in
            ok = ch in (row["registered"] or [])
        if ok:
            usable.append(ch)
    if row.get("best_channel") in usable:
        return str(row["best_channel"])
    return usable[0] if usable else None


def grace(campaign: Campaign, tick: datetime) -> timedelta:
    """How long after ``tick`` a recurring campaign's occurrence may still be started: the
    schedule's grace_hours, else a quarter of the time to the next tick (a weekly campaign
    42 hours, a daily one 6), so two occurrences can never reach a customer days apart
    because a run came late."""
    s = campaign.schedule
    if s.grace_hours is not None:
        return timedelta(hours=s.grace_hours)
    assert s.cron is not None
    following: datetime = croniter(s.cron, tick).get_next(datetime)
    return (following - tick) / 4


def due_occurrence(campaign: Campaign, now: datetime) -> datetime | None:
    """The occurrence to plan at ``now``: the 'once' time when it has come, the latest cron
    tick (at or before ``now``) while its grace period lasts, or this hour for a trigger;
    None before it is due, after the grace period or after the end date."""
    s = campaign.schedule
    if now.date() > campaign.end_date:
        return None
    if s.kind == "once":
        assert s.at is not None
        return s.at.astimezone(UTC) if s.at <= now else None
    if s.kind == "recurring":
        assert s.cron is not None
        # a plain datetime in UTC: croniter drops the zone of pendulum's (Airflow's) datetimes
        at = datetime.fromtimestamp(now.timestamp(), UTC)
        # a tick at ``now`` itself counts (croniter's previous tick is strictly before)
        tick: datetime = croniter(s.cron, at + timedelta(microseconds=1)).get_prev(datetime)
        if at - tick > grace(campaign, tick):
            log.debug("%s: the tick at %s is past its grace period", campaign.id, tick)
            return None
        return tick.astimezone(UTC)
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def plan(conn: psycopg.Connection, campaign: Campaign, now: datetime,
         settings: Settings | None = None, occurrence: datetime | None = None,
         source: str = "file", only: list[str] | None = None,
         context: dict[str, dict[str, Any]] | None = None) -> Counter[str]:  # fmt: skip
    """Plan the campaign's due occurrence (or ``occurrence``): snapshot its audience once,
    and write one delivery row, with the message rendered, per member not planned yet.
    Members past the campaign's cap or inside its cooldown are not in the snapshot.
    ``only`` narrows the audience to these customers (a journey's due entries), and
    ``context`` gives each of them more template fields (the triggering event's properties).
    An event-triggered journey is planned only that way (``notify.journeys``)."""
    settings = settings or get_settings()
    counts: Counter[str] = Counter()
    if campaign.schedule.event is not None and only is None:
        return counts
    occurrence = occurrence or due_occurrence(campaign, now)
    if occurrence is None:
        return counts
    available = {"push", *settings.apprise_urls}
    with conn.transaction():
        if only is None and campaign.schedule.trigger is not None:
            only = triggered(conn, campaign, now)
        members, held = snapshot_audience(conn, campaign, occurrence, only, now)
        conn.execute(
            "insert into crm.campaign_runs (campaign_id, occurrence, source, definition,"
            " ends_on, members, held_out, planned_at) values (%s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict do nothing",
            (campaign.id, occurrence, source, Jsonb(campaign.model_dump(mode="json")),
             campaign.end_date, members, held, now),
        )  # fmt: skip
        cur = conn.execute(PLAN_QUERY, {"campaign": campaign.id, "occurrence": occurrence})
        cols = [c.name for c in cur.description or []]
        values = []
        for row in (dict(zip(cols, r, strict=True)) for r in cur.fetchall()):
            tz = zone(row["time_zone"])
            if campaign.send_time.mode == "immediate":
                slot = immediate_slot(now, tz, settings.quiet_hours)
            else:
                hour = send_hour(campaign, row["best_hour"], settings.quiet_hours)
                slot = next_slot(max(now, occurrence), tz, hour)
            blocked = "*" in (row["suppressed_on"] or [])
            channel = None if blocked else choose_channel(campaign, row, available)
            why_not = (
                "on the suppression list"
                if blocked
                else "no consent or address for any campaign channel"
            )
            segments = {row["lifecycle_segment"], str(row["segment_id"])}
            message = pick_message(campaign, segments, row["locale"])
            products = list(row["products"] or [])
            fields = {
                "top_category": row["top_category"],
                "lifecycle_segment": row["lifecycle_segment"],
                "segment_name": row["segment_name"],
                "locale": row["locale"],
                **{f"product_{i + 1}": p for i, p in enumerate(products[:3])},
                **(context or {}).get(row["customer_id"], {}),
            }
            text = render(message, fields)
            state, reason = "planned", None
            if row["held_out"]:
                state, reason = "held_out", "holdout group" + ("" if channel else f"; {why_not}")
            elif channel is None:
                state, reason = "suppressed", why_not
            elif slot.astimezone(tz).date() > campaign.end_date:
                state, reason = "suppressed", "slot after the campaign's end date"
            values.append((campaign.id, occurrence, row["customer_id"],
                           channel or campaign.channels[0], slot, state, reason, message.label,
                           row["lifecycle_segment"], text["title"], text["body"],
                           text.get("link"), now))  # fmt: skip
            counts[state] += 1
        with conn.cursor() as cur2:
            cur2.executemany(
                "insert into crm.deliveries (campaign_id, occurrence, customer_id, channel,"
                " slot, state, reason, variant, segment, title, body, link, planned_at)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " on conflict do nothing",
                values,
            )
    return counts


@dataclass
class Outcome:
    delivery_id: int
    state: str  # sent, failed, suppressed, planned (retry later)
    reason: str | None = None
    retry_at: datetime | None = None


class Caps:
    """Push frequency caps per customer, counted in Redis (per local day and per 7 days)."""

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r, self.s = r, settings
        self._take: Any = None

    # one script call per batch: each customer's day counter and 7-day window, taken only if
    # both stay within the caps (what is refused is given back), in the order given
    TAKE = """
    local now, cutoff = tonumber(ARGV[1]), tonumber(ARGV[2])
    local per_day, per_week = tonumber(ARGV[3]), tonumber(ARGV[4])
    local out = {}
    for i = 1, #KEYS, 2 do
        local day, week, member = KEYS[i], KEYS[i + 1], ARGV[4 + (i + 1) / 2]
        local day_n = redis.call('INCR', day)
        redis.call('EXPIRE', day, 172800)
        redis.call('ZADD', week, now, member)
        redis.call('ZREMRANGEBYSCORE', week, 0, cutoff)
        local week_n = redis.call('ZCARD', week)
        redis.call('EXPIRE', week, 691200)
        if day_n <= per_day and week_n <= per_week then
            out[#out + 1] = 1
        else
            redis.call('DECR', day)
            redis.call('ZREM', week, member)
            out[#out + 1] = 0
        end
    end
    return out
    """

    def take_many(self, wanted: list[tuple[str, ZoneInfo]], now: datetime) -> list[bool]:
        """One push each for these customers, if their caps allow: one round trip to Redis
        for a whole batch (a script: a customer twice in the batch counts twice). What is
        refused is given back."""
        if not wanted:
            return []
        keys, members = [], []
        stamp = now.timestamp()
        for customer_id, tz in wanted:
            day = now.astimezone(tz).date().isoformat()
            pre = f"{self.s.redis_prefix}:cap:{customer_id}"
            d_key = f"{pre}:day:{day}"
            keys += [d_key, f"{pre}:week"]
            members.append(f"{stamp}:{d_key}")
        if self._take is None:
            self._take = self.r.register_script(self.TAKE)
        args = [stamp, stamp - 7 * 86400, self.s.push_cap_per_day, self.s.push_cap_per_week]
        return [bool(x) for x in self._take(keys=keys, args=[*args, *members])]


def send_due(
    url: str,
    sender: FcmSender,
    r: redis.Redis,
    now: datetime | None = None,
    batch: int = 500,
    settings: Settings | None = None,
    apprise: AppriseSender | None = None,
) -> Counter[str]:
    """Claim, send and record due deliveries until none are left; returns outcomes."""
    settings = settings or get_settings()
    apprise = apprise or AppriseSender.from_settings(settings)
    caps = Caps(r, settings)
    totals: Counter[str] = Counter()
    with psycopg.connect(url, autocommit=True) as conn:  # one connection for every batch
        while True:
            at = now or datetime.now(UTC)
            claimed = conn.execute(
                CLAIM, {"now": at, "lease": settings.send_lease_seconds, "limit": batch}
            ).fetchall()
            if not claimed:
                return totals
            outcomes = _send_claimed(conn, claimed, sender, apprise, caps, at, settings)
            record(conn, outcomes, at)
            totals.update(o.state for o in outcomes)


RECORD = """
    update crm.deliveries d
    set state = o.state, reason = o.reason, slot = coalesce(o.retry_at, d.slot),
        sent_at = case when o.state = 'sent' then %(at)s::timestamptz end, updated_at = now()
    from unnest(%(ids)s::bigint[], %(states)s::text[], %(reasons)s::text[],
                %(retry_at)s::timestamptz[]) as o(delivery_id, state, reason, retry_at)
    where d.delivery_id = o.delivery_id
"""


def record(conn: psycopg.Connection, outcomes: list[Outcome], at: datetime) -> None:
    """Every outcome of a batch in one statement (one round trip, one transaction)."""
    conn.execute(RECORD, {"at": at, "ids": [o.delivery_id for o in outcomes],
                          "states": [o.state for o in outcomes],
                          "reasons": [o.reason for o in outcomes],
                          "retry_at": [o.retry_at for o in outcomes]})  # fmt: skip


def _send_claimed(conn: psycopg.Connection, claimed: list[Any], sender: FcmSender,
                  apprise: AppriseSender, caps: Caps, at: datetime,
                  settings: Settings) -> list[Outcome]:  # fmt: skip
    cur = conn.execute(SEND_INFO, ([c[1] for c in claimed],))
    cols = [c.name for c in cur.description or []]
    info = {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    outcomes: list[Outcome] = []
    pushes: list[Push] = []
    notes: list[Note] = []
    capped: list[tuple[str, ZoneInfo]] = []  # (customer, zone) of each push, for the caps
    attempts: dict[str, int] = {}
    for delivery_id, customer_id, channel, tries, title, body, link in claimed:
        row = info.get(customer_id)
        if row is None:
            outcomes.append(Outcome(delivery_id, "failed", "customer no longer exists"))
            continue
        if {channel, "*"} & set(row["suppressed_on"] or []):
            outcomes.append(Outcome(delivery_id, "suppressed", "on the suppression list"))
            continue
        if channel == "push":
            if not row["push_consent"]:
                outcomes.append(Outcome(delivery_id, "suppressed", "push consent withdrawn"))
                continue
            if row["push_target"] is None:
                outcomes.append(Outcome(delivery_id, "suppressed", "no valid push token"))
                continue
            if not sender.configured:  # wait (no cap taken) rather than fail every message
                later = at + timedelta(hours=1)
                outcomes.append(Outcome(delivery_id, "planned", NOT_CONFIGURED, later))
                continue
            token, platform = row["push_target"].rsplit("|", 1)
            capped.append((customer_id, zone(row["time_zone"])))
            pushes.append(Push(str(delivery_id), token, platform, title, body, link))
            attempts[str(delivery_id)] = tries
            continue
        if channel == "email" and not row["email_consent"]:
            outcomes.append(Outcome(delivery_id, "suppressed", "email consent withdrawn"))
            continue
        address = row["email"] if channel == "email" else row["addresses"].get(channel)
        if not address:
            outcomes.append(Outcome(delivery_id, "suppressed", f"no {channel} address"))
            continue
        notes.append(Note(str(delivery_id), channel, address, title, body, link))
    # the frequency caps, for the whole batch at once
    allowed = caps.take_many(capped, at)
    outcomes += [Outcome(int(p.key), "suppressed", "frequency cap")
                 for p, ok in zip(pushes, allowed, strict=True) if not ok]  # fmt: skip
    pushes = [p for p, ok in zip(pushes, allowed, strict=True) if ok]
    if any(o.reason == NOT_CONFIGURED for o in outcomes):
        log.error("FCM is not configured (CRM_FCM_CREDENTIALS_FILE): pushes wait")
    for key, failure in apprise.send(notes).items():
        outcomes.append(Outcome(int(key), "failed" if failure else "sent", failure))
    results = sender.send(pushes) if pushes else []
    by_key = {p.key: p for p in pushes}
    invalid: list[tuple[str, str | None]] = []
    for res in results:
        did = int(res.key)
        if res.outcome == "sent":
            outcomes.append(Outcome(did, "sent"))
        elif res.outcome == "invalid_token":
            invalid.append((by_key[res.key].token, res.reason))
            outcomes.append(Outcome(did, "failed", res.reason))
        elif res.outcome == "retry" and attempts[res.key] < settings.send_max_attempts:
            wait = max(res.retry_after or 0.0, 30.0 * 2 ** (attempts[res.key] - 1))
            outcomes.append(Outcome(did, "planned", res.reason, at + timedelta(seconds=wait)))
        else:
            outcomes.append(Outcome(did, "failed", res.reason))
    if invalid:  # one statement for the batch's invalid tokens
        conn.execute(
            "insert into crm.invalid_tokens (token, reason) select * from unnest(%s::text[],"
            " %s::text[]) on conflict do nothing",
            ([t for t, _ in invalid], [r for _, r in invalid]),
        )
    return outcomes
