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

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import redis

from crm.settings import Settings, get_settings
from notify.audience import snapshot_audience
from notify.campaigns import Campaign, pick_message, render
from notify.fcm import FcmSender, Push

PLAN_QUERY = """
    select m.customer_id, m.held_out, c.time_zone, c.push_consent, c.email_consent,
           c.lifecycle_segment, st.best_hour, st.best_channel,
           exists (select 1 from marts.push_devices d
                   where d.customer_id = m.customer_id and d.is_valid
                     and d.push_token not in (select token from crm.invalid_tokens)) as has_token
    from crm.campaign_audiences m
    join marts.dim_customers c on c.customer_id = m.customer_id
    left join ml.send_times st on st.customer_id = m.customer_id
    where m.campaign_id = %s
      and not exists (select 1 from crm.deliveries d
                      where d.campaign_id = m.campaign_id and d.customer_id = m.customer_id)
"""
CLAIM = """
    with due as (
        select delivery_id from crm.deliveries
        where (state = 'planned' and slot <= %(now)s)
           or (state = 'sending' and claimed_at < %(now)s - make_interval(secs => %(lease)s))
        order by slot, delivery_id
        limit %(limit)s
        for update skip locked
    )
    update crm.deliveries d
    set state = 'sending', claimed_at = %(now)s, attempts = d.attempts + 1, updated_at = now()
    from due where d.delivery_id = due.delivery_id
    returning d.delivery_id, d.campaign_id, d.customer_id, d.channel, d.attempts
"""


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
    q_from, q_to = quiet
    in_quiet = (q_from <= hour or hour < q_to) if q_from > q_to else (q_from <= hour < q_to)
    return q_to if in_quiet else hour


def next_slot(now: datetime, tz: ZoneInfo, hour: int) -> datetime:
    """The next time (at or after ``now``) the customer's clock shows ``hour``:00, in UTC."""
    local = now.astimezone(tz)
    candidate = datetime(local.year, local.month, local.day, hour, tzinfo=tz)
    if candidate < local:
        nxt = local.date() + timedelta(days=1)
        candidate = datetime(nxt.year, nxt.month, nxt.day, hour, tzinfo=tz)
    return candidate.astimezone(UTC)


def choose_channel(campaign: Campaign, row: dict[str, Any]) -> str | None:
    """The customer's best channel if the campaign allows it and they can get it, else the
    campaign's first usable channel; None when consent or an address is missing for all."""
    usable = []
    for ch in campaign.channels:
        push_ok = ch == "push" and row["push_consent"] and row["has_token"]
        email_ok = ch == "email" and row["email_consent"]
        if push_ok or email_ok:
            usable.append(ch)
    if row.get("best_channel") in usable:
        return str(row["best_channel"])
    return usable[0] if usable else None


def plan(conn: psycopg.Connection, campaign: Campaign, now: datetime,
         settings: Settings | None = None) -> Counter[str]:  # fmt: skip
    """Snapshot the audience (once) and write a delivery row for each member not planned yet."""
    settings = settings or get_settings()
    counts: Counter[str] = Counter()
    with conn.transaction():
        snapshot_audience(conn, campaign)
        cur = conn.execute(PLAN_QUERY, (campaign.id,))
        cols = [c.name for c in cur.description or []]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        values = []
        for row in rows:
            hour = send_hour(campaign, row["best_hour"], settings.quiet_hours)
            slot = next_slot(now, zone(row["time_zone"]), hour)
            channel = choose_channel(campaign, row)
            if row["held_out"]:
                state, reason, channel = (
                    "held_out",
                    "holdout group",
                    channel or campaign.channels[0],
                )
            elif channel is None:
                state, reason, channel = (
                    "suppressed",
                    "no consent or address for any campaign channel",
                    campaign.channels[0],
                )
            else:
                state, reason = "planned", None
            values.append((campaign.id, row["customer_id"], channel, slot, state, reason))
            counts[state] += 1
        with conn.cursor() as cur2:
            cur2.executemany(
                "insert into crm.deliveries"
                " (campaign_id, customer_id, channel, slot, state, reason)"
                " values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
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

    def take(self, customer_id: str, now: datetime, tz: ZoneInfo) -> bool:
        day = now.astimezone(tz).date().isoformat()
        pre = f"{self.s.redis_prefix}:cap:{customer_id}"
        d_key, w_key = f"{pre}:day:{day}", f"{pre}:week"
        pipe = self.r.pipeline()
        pipe.incr(d_key)
        pipe.expire(d_key, 2 * 86400)
        pipe.zadd(w_key, {f"{now.timestamp()}:{d_key}": now.timestamp()})
        pipe.zremrangebyscore(w_key, 0, now.timestamp() - 7 * 86400)
        pipe.zcard(w_key)
        pipe.expire(w_key, 8 * 86400)
        day_n, _, _, _, week_n, _ = pipe.execute()
        if day_n > self.s.push_cap_per_day or week_n > self.s.push_cap_per_week:
            self.release(customer_id, now, tz)
            return False
        return True

    def release(self, customer_id: str, now: datetime, tz: ZoneInfo) -> None:
        day = now.astimezone(tz).date().isoformat()
        pre = f"{self.s.redis_prefix}:cap:{customer_id}"
        self.r.decr(f"{pre}:day:{day}")
        self.r.zrem(f"{pre}:week", f"{now.timestamp()}:{pre}:day:{day}")


def send_due(
    url: str,
    campaigns: dict[str, Campaign],
    sender: FcmSender,
    r: redis.Redis,
    now: datetime | None = None,
    batch: int = 500,
    settings: Settings | None = None,
    dry_run: bool = False,
) -> Counter[str]:
    """Claim, send and record due push deliveries until none are left; returns outcomes."""
    settings = settings or get_settings()
    caps = Caps(r, settings)
    totals: Counter[str] = Counter()
    while True:
        at = now or datetime.now(UTC)
        with psycopg.connect(url, autocommit=True) as conn:
            claimed = conn.execute(
                CLAIM, {"now": at, "lease": settings.send_lease_seconds, "limit": batch}
            ).fetchall()
            if not claimed:
                return totals
            outcomes = _send_claimed(conn, claimed, campaigns, sender, caps, at, settings, dry_run)
            with conn.transaction():
                for o in outcomes:
                    conn.execute(
                        "update crm.deliveries set state = %s, reason = %s,"
                        " slot = coalesce(%s, slot),"
                        " sent_at = case when %s = 'sent' then %s end, updated_at = now()"
                        " where delivery_id = %s",
                        (o.state, o.reason, o.retry_at, o.state, at, o.delivery_id),
                    )
            totals.update(o.state for o in outcomes)


def _send_claimed(conn: psycopg.Connection, claimed: list[Any], campaigns: dict[str, Campaign],
                  sender: FcmSender, caps: Caps, at: datetime, settings: Settings,
                  dry_run: bool) -> list[Outcome]:  # fmt: skip
    ids = [c[2] for c in claimed]
    info = {
        r[0]: r[1:]
        for r in conn.execute(
            "select c.customer_id, c.push_consent, c.time_zone, c.locale, c.lifecycle_segment,"
            " f.top_category, (select d.push_token || '|' || d.platform from marts.push_devices d"
            "   where d.customer_id = c.customer_id and d.is_valid and d.push_token not in"
            "   (select token from crm.invalid_tokens) order by d.token_seen_at desc limit 1),"
            " (select r.product_id from ml.recommendations r"
            "   where r.customer_id = c.customer_id order by r.rank limit 1)"
            " from marts.dim_customers c"
            " left join marts.customer_features f on f.customer_id = c.customer_id"
            " where c.customer_id = any(%s)",
            (ids,),
        ).fetchall()
    }
    outcomes: list[Outcome] = []
    pushes: list[Push] = []
    attempts: dict[str, int] = {}
    for delivery_id, campaign_id, customer_id, channel, tries in claimed:
        campaign = campaigns.get(campaign_id)
        row = info.get(customer_id)
        if campaign is None or row is None:
            outcomes.append(Outcome(delivery_id, "failed", "campaign or customer no longer exists"))
            continue
        consent, tz_name, locale, segment, top_category, target, product = row
        if channel != "push":
            outcomes.append(Outcome(delivery_id, "failed", f"channel {channel} not available yet"))
            continue
        if not consent:
            outcomes.append(Outcome(delivery_id, "suppressed", "push consent withdrawn"))
            continue
        if target is None:
            outcomes.append(Outcome(delivery_id, "suppressed", "no valid push token"))
            continue
        if not caps.take(customer_id, at, zone(tz_name)):
            outcomes.append(Outcome(delivery_id, "suppressed", "frequency cap"))
            continue
        message = pick_message(campaign, {segment}, locale)
        text = render(message, {"top_category": top_category, "product_1": product})
        token, platform = target.rsplit("|", 1)
        pushes.append(Push(str(delivery_id), token, platform, text["title"], text["body"],
                           text.get("link")))  # fmt: skip
        attempts[str(delivery_id)] = tries
    results = sender.send(pushes, dry_run=dry_run) if pushes else []
    by_key = {p.key: p for p in pushes}
    for res in results:
        did = int(res.key)
        if res.outcome == "sent":
            outcomes.append(Outcome(did, "sent"))
        elif res.outcome == "invalid_token":
            conn.execute(
                "insert into crm.invalid_tokens (token, reason) values (%s, %s)"
                " on conflict do nothing",
                (by_key[res.key].token, res.reason),
            )
            outcomes.append(Outcome(did, "failed", res.reason))
        elif res.outcome == "retry" and attempts[res.key] < settings.send_max_attempts:
            wait = max(res.retry_after or 0.0, 30.0 * 2 ** (attempts[res.key] - 1))
            outcomes.append(Outcome(did, "planned", res.reason, at + timedelta(seconds=wait)))
        else:
            outcomes.append(Outcome(did, "failed", res.reason))
    return outcomes
