"""What shop-crm measured against what the simulated shop's reactions truly caused.

The reactions' ground truth (``crm.simulate.react``) says, per delivery, which orders the
message caused. A treated member's true effect on "converted within the attribution window" is
1 when the message caused an order in the window and no other order of theirs falls in it (the
order they would have placed anyway, or one another message caused); its true effect on revenue
is the revenue of the orders it caused in the window. A campaign's true uplift is the mean of
these over its treated arm (everyone not held out, as ``marts.campaign_performance`` counts
them), its true incremental revenue their sum. The window is the one the product documents,
72 hours from the slot (from the triggering event for a journey), fixed here: the truth does not
follow a changed ``attribution_hours``.

Also: open rates of pushes sent at each customer's best hour (``ml.send_times``) against other
hours, measured and planted; and click-through of the recommendations row against the
bestsellers row, measured from the loaded events and planted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from crm.errors import CrmError

ATTRIBUTION_HOURS = 72


def read_reactions(truth: Path) -> list[dict[str, Any]]:
    path = truth / "ground_truth" / "reactions.jsonl" if truth.is_dir() else truth
    if not path.exists():
        raise CrmError(f"{path} not found: run `crm react` first")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass(frozen=True)
class CampaignTruth:
    campaign_id: str
    treated: int
    held_out: int
    true_uplift: float
    true_incremental_revenue: float
    uplift: float | None
    uplift_ci: tuple[float, float] | None
    incremental_revenue: float | None
    incremental_revenue_ci: tuple[float, float] | None

    @property
    def covered(self) -> bool | None:
        if self.uplift_ci is None:
            return None
        return self.uplift_ci[0] <= self.true_uplift <= self.uplift_ci[1]

    @property
    def revenue_covered(self) -> bool | None:
        if self.incremental_revenue_ci is None:
            return None
        low, high = self.incremental_revenue_ci
        return low <= self.true_incremental_revenue <= high


TRUTH = """
with journey_entries as (
    select campaign_id, customer_id, occurrence, min(triggered_at) as triggered_at
    from crm.journey_entries where occurrence is not null
    group by 1, 2, 3
),
d as (
    select d.delivery_id, d.campaign_id, d.customer_id, d.state = 'held_out' as held_out,
           j.triggered_at is not null as journey,
           coalesce(j.triggered_at, d.slot) as opens,
           d.slot + make_interval(hours => %(hours)s) as closes
    from crm.deliveries d
    left join journey_entries j
      on j.campaign_id = d.campaign_id and j.customer_id = d.customer_id
     and j.occurrence = d.occurrence
    where d.slot <= crm.now()
),
per_delivery as (
    select d.delivery_id, d.campaign_id, d.held_out,
           exists (select 1 from caused c where c.delivery_id = d.delivery_id
                   and c.at >= d.opens and c.at < d.closes) as caused,
           exists (select 1 from marts.fct_orders o
                   where o.customer_id = d.customer_id
                     and (o.ordered_at > d.opens or (not d.journey and o.ordered_at = d.opens))
                     and o.ordered_at < d.closes
                     and o.order_id not in (select c.order_id from caused c
                                            where c.delivery_id = d.delivery_id)) as other,
           coalesce((select sum(c.revenue) from caused c where c.delivery_id = d.delivery_id
                     and c.at >= d.opens and c.at < d.closes), 0) as revenue
    from d
)
select t.campaign_id,
       count(*) filter (where not t.held_out),
       count(*) filter (where t.held_out),
       coalesce(avg((t.caused and not t.other)::int) filter (where not t.held_out), 0),
       coalesce(sum(t.revenue) filter (where not t.held_out), 0),
       p.uplift, p.uplift_ci_low, p.uplift_ci_high, p.incremental_revenue,
       p.revenue_uplift_ci_low * p.treated, p.revenue_uplift_ci_high * p.treated
from per_delivery t
left join marts.campaign_performance p
  on p.campaign_id = t.campaign_id and p.breakdown = 'campaign'
group by t.campaign_id, p.uplift, p.uplift_ci_low, p.uplift_ci_high, p.incremental_revenue,
         p.revenue_uplift_ci_low, p.revenue_uplift_ci_high, p.treated
order by t.campaign_id
"""


def _caused(conn: psycopg.Connection, reactions: list[dict[str, Any]]) -> None:
    conn.execute(
        "create temp table caused (delivery_id bigint, order_id text, revenue numeric,"
        " at timestamptz) on commit drop"
    )
    with conn.cursor().copy("copy caused from stdin") as cp:
        for r in reactions:
            for o in r["orders"]:
                cp.write_row((r["delivery_id"], o["order_id"], o["revenue"], o["at"]))


def campaign_truth(url: str, reactions: list[dict[str, Any]]) -> list[CampaignTruth]:
    """Per campaign: the true uplift and incremental revenue in its treated arm, beside what
    ``marts.campaign_performance`` measured (with its 95% intervals)."""
    with psycopg.connect(url) as conn:
        _caused(conn, reactions)
        rows = conn.execute(TRUTH, {"hours": ATTRIBUTION_HOURS}).fetchall()
    out = []
    for r in rows:
        ci = (r[6], r[7]) if r[6] is not None else None
        rev_ci = (r[9], r[10]) if r[9] is not None else None
        out.append(CampaignTruth(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], ci,
                                 r[8], rev_ci))  # fmt: skip
    return out


SEND_HOURS = """
select extract(hour from d.slot at time zone coalesce(c.time_zone, 'UTC')) = st.best_hour,
       count(*),
       count(*) filter (where exists (
           select 1 from marts.fct_message_engagement e
           where e.delivery_id = d.delivery_id::text and e.engaged)),
       array_agg(d.delivery_id)
from crm.deliveries d
join marts.dim_customers c using (customer_id)
join ml.send_times st using (customer_id)
where d.state = 'sent' and d.channel = %s
group by 1
"""


@dataclass(frozen=True)
class Rates:
    n: int
    measured: float
    planted: float


def send_hour_rates(
    url: str, reactions: list[dict[str, Any]], channel: str = "push"
) -> dict[str, Rates]:
    """Open rates of messages sent at the customer's best hour (shop-crm's ``ml.send_times``)
    and at another hour: measured from the loaded engagement events, and planted (the mean of
    the reactions' open probabilities)."""
    p_open = {r["delivery_id"]: r["p_open"] for r in reactions if r.get("received")}
    with psycopg.connect(url) as conn:
        rows = conn.execute(SEND_HOURS, (channel,)).fetchall()
    out = {}
    for at_best, n, opened, ids in rows:
        planted = [p_open[i] for i in ids if i in p_open]
        key = "best hour" if at_best else "another hour"
        out[key] = Rates(n, opened / n, sum(planted) / len(planted) if planted else float("nan"))
    return out


CLICKS = """
select c.list_id, count(*),
       count(*) filter (where exists (
           select 1 from marts.fct_order_items o
           where o.customer_id = c.user_id and o.product_id = c.product_id
             and o.ordered_at >= c.event_at
             and o.ordered_at < c.event_at + make_interval(hours => %s)))
from (select distinct on (message_id) user_id, event_at,
             payload #>> '{properties,list_id}' as list_id,
             payload #>> '{properties,product_id}' as product_id
      from raw.events
      where event = 'Product Clicked' and payload #>> '{properties,list_id}' = any(%s)) c
group by 1
"""
LISTED = """
select e.payload #>> '{properties,list_id}',
       sum(jsonb_array_length(e.payload #> '{properties,products}'))
from raw.events e
where e.event = 'Product List Viewed' and e.payload #>> '{properties,list_id}' = any(%s)
group by 1
"""


def recommendation_rates(
    url: str, reactions: list[dict[str, Any]]
) -> dict[str, tuple[Rates, Rates]]:
    """Per row of the recommendations screen (``recommendations``, ``bestsellers``): (clicks
    per shown product, purchases per shown product within the attribution window of the
    click), each measured from the loaded events (``Product List Viewed``, ``Product
    Clicked``, the order items) and planted (the mean probability of what was shown)."""
    lists = ["recommendations", "bestsellers"]
    with psycopg.connect(url) as conn:
        clicks = {r[0]: r[1:] for r in conn.execute(CLICKS, (ATTRIBUTION_HOURS, lists))}
        shown: dict[str, int] = dict(conn.execute(LISTED, (lists,)).fetchall())
    out = {}
    for name in lists:
        truth = [s for r in reactions for s in r["shown"] if s["list"] == name]
        n = int(shown.get(name) or 0)
        clicked, bought = clicks.get(name, (0, 0))
        k = len(truth) or 1
        out[name] = (
            Rates(n, clicked / n if n else float("nan"), sum(s["p_click"] for s in truth) / k),
            Rates(n, bought / n if n else float("nan"),
                  sum(s["p_click"] * s["p_buy"] for s in truth) / k),
        )  # fmt: skip
    return out
