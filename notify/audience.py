"""A campaign's audience, from the marts and the ML tables, snapshotted once with its holdout.

SQL is composed from whitelisted identifiers (``FILTER_FIELDS``) with every value bound as a
parameter: a campaign (or a trigger form) can never inject SQL.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from notify.campaigns import (
    FILTER_FIELDS,
    HORIZON_FIELD,
    Campaign,
    CampaignError,
    Filter,
    value_horizons,
)

TABLE_ALIASES = {"customers": "c", "features": "f", "churn": "ch", "value": "v"}
OPS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
BASE = """
    select c.customer_id, c.lifecycle_segment, c.locale, c.time_zone, c.push_consent,
           c.email_consent, s.segment_id, s.segment_name, ch.churn_probability, ch.risk_band,
           st.best_hour, st.best_channel, f.top_category, v.predicted_value_365d, v.p_alive,
           v.value_band
    from marts.dim_customers c
    left join marts.customer_features f on f.customer_id = c.customer_id
    left join ml.customer_segments s on s.customer_id = c.customer_id
    left join ml.churn_scores ch on ch.customer_id = c.customer_id
    left join ml.send_times st on st.customer_id = c.customer_id
    left join ml.customer_value v on v.customer_id = c.customer_id
"""
HORIZON_VALUE = """(select h.{} from ml.customer_value_horizons h
                   where h.customer_id = c.customer_id and h.horizon_days = %s)"""


def in_holdout(campaign_id: str, customer_id: str, percent: float) -> bool:
    """Deterministic: the same customer is always in (or out of) a campaign's holdout."""
    h = hashlib.sha256(f"{campaign_id}:{customer_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 10_000 < round(percent * 100)


def _condition(f: Filter) -> tuple[sql.Composable, list[Any]]:
    pre: list[Any] = []
    if f.field in FILTER_FIELDS:
        table, column = FILTER_FIELDS[f.field]
        col: sql.Composable = sql.Identifier(TABLE_ALIASES[table], column)
    else:  # predicted_<orders|value>_<days>d
        match = HORIZON_FIELD.match(f.field)
        assert match is not None  # the campaign's validation allowed nothing else
        what = sql.Identifier(f"predicted_{match.group(1)}")
        col, pre = sql.SQL(HORIZON_VALUE).format(what), [int(match.group(2))]
    if f.op == "in":
        return sql.SQL("{} = any(%s)").format(col), [*pre, list(f.value)]
    if f.op == "between":
        return sql.SQL("{} between %s and %s").format(col), [*pre, *f.value]
    return sql.SQL("{} {} %s").format(col, sql.SQL(OPS[f.op])), [*pre, f.value]


# who a built-in trigger fires for at time %(now)s (UTC); a campaign's own audience narrows it
# further (abandoned_cart is a journey now: notify.campaigns.Schedule)
TRIGGER_QUERIES = {
    # inactive on the latest snapshot day, something else the day before
    "became_inactive": """
        select t.customer_id from marts.customer_segments_daily t
        join marts.customer_segments_daily y
          on y.customer_id = t.customer_id and y.day = t.day - 1
        where t.day = (select max(day) from marts.customer_segments_daily
                       where day <= (%(now)s at time zone 'UTC')::date)
          and t.lifecycle_segment = 'inactive' and y.lifecycle_segment <> 'inactive'
    """,
}


def triggered(conn: psycopg.Connection, campaign: Campaign, now: datetime) -> list[str]:
    """Customers the campaign's trigger fires for at ``now``."""
    s = campaign.schedule
    assert s.trigger is not None
    cur = conn.execute(TRIGGER_QUERIES[s.trigger], {"now": now})
    return [r[0] for r in cur.fetchall()]


# not capped and not within the cooldown. The cap counts every delivery planned for a
# reachable customer (sent or not) and the held-out rows of customers who would have been
# reachable, so both arms of the holdout experiment come back at the same rate.
ELIGIBLE = """
    (select count(*) from crm.deliveries d
     where d.campaign_id = %s and d.customer_id = c.customer_id
       and (d.state in ('planned', 'sending', 'sent', 'failed')
            or (d.state = 'held_out' and d.reason = 'holdout group'))) < %s
    and not exists (select 1 from crm.deliveries d
                    where d.campaign_id = %s and d.customer_id = c.customer_id
                      and d.planned_at > %s - make_interval(days => %s))
"""


def audience_query(
    campaign: Campaign, only: list[str] | None = None, now: datetime | None = None
) -> tuple[sql.Composed, list[Any]]:
    """The campaign's audience; with ``now``, only the customers eligible at that time."""
    conds: list[sql.Composable] = []
    params: list[Any] = []
    if now is not None:
        conds.append(sql.SQL(ELIGIBLE))
        params += [campaign.id, campaign.cap_per_customer, campaign.id, now,
                   campaign.schedule.cooldown_days]  # fmt: skip
    if only is not None:
        conds.append(sql.SQL("c.customer_id = any(%s)"))
        params.append(only)
    a = campaign.audience
    if a.lifecycle:
        conds.append(sql.SQL("c.lifecycle_segment = any(%s)"))
        params.append(list(a.lifecycle))
    if a.ai_segments:
        conds.append(sql.SQL("s.segment_id = any(%s)"))
        params.append(list(a.ai_segments))
    if a.churn_risk:
        conds.append(sql.SQL("ch.risk_band = any(%s)"))
        params.append(list(a.churn_risk))
    for f in a.filters:
        cond, values = _condition(f)
        conds.append(cond)
        params += values
    where = sql.SQL(" where ") + sql.SQL(" and ").join(conds) if conds else sql.SQL("")
    return sql.SQL(BASE) + where + sql.SQL(" order by c.customer_id"), params


def _scored(conn: psycopg.Connection, days: int) -> bool:
    """Whether the latest scoring run wrote predictions over ``days``."""
    row = conn.execute(
        "select exists (select 1 from ml.customer_value_horizons where horizon_days = %s)",
        (days,),
    ).fetchone()
    return bool(row and row[0])


def select_audience(
    conn: psycopg.Connection,
    campaign: Campaign,
    only: list[str] | None = None,
    now: datetime | None = None,
) -> pd.DataFrame:
    missing = [d for d in sorted(value_horizons([campaign])) if not _scored(conn, d)]
    if missing:
        raise CampaignError(
            f"{campaign.id}: predicted orders or value over {missing} days are not "
            "scored yet; run `crm score` (or score_customers): it scores every horizon the "
            "campaign files ask for"
        )
    query, params = audience_query(campaign, only, now)
    cur = conn.execute(query, params)
    frame = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or []])
    frame["held_out"] = [
        in_holdout(campaign.journey, c, campaign.holdout_percent) for c in frame.customer_id
    ]
    return frame


def snapshot_audience(
    conn: psycopg.Connection,
    campaign: Campaign,
    occurrence: datetime,
    only: list[str] | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Record one occurrence's audience once: a second call keeps the first snapshot (and its
    holdout). ``only`` narrows it to the customers a trigger fired for; with ``now``, customers
    capped or in the campaign's cooldown at that time are left out. Returns (members, held
    out) as recorded. Call inside a transaction: concurrent callers wait on a per-campaign lock
    instead of racing."""
    conn.execute("select pg_advisory_xact_lock(hashtext('audience:' || %s))", (campaign.id,))
    done = conn.execute(
        "select count(*), count(*) filter (where held_out) from crm.campaign_audiences"
        " where campaign_id = %s and occurrence = %s",
        (campaign.id, occurrence),
    ).fetchone()
    if done and done[0]:
        return int(done[0]), int(done[1])
    frame = select_audience(conn, campaign, only, now)
    taken = datetime.now(UTC)
    with conn.cursor().copy(
        "copy crm.campaign_audiences (campaign_id, occurrence, customer_id, held_out, snapshot_at)"
        " from stdin"
    ) as cp:
        for cid, held in zip(frame.customer_id, frame.held_out, strict=True):
            cp.write_row((campaign.id, occurrence, cid, bool(held), taken))
    return len(frame), int(frame.held_out.sum())
