"""The loop closed: shop-crm plans and sends, the simulated shop reacts with planted effects, the
reactions are loaded and built, and what shop-crm measures is checked against the truth.

One experiment for the module (``crm.simulate.experiment``) on a copy of the ML tests'
1,500-person shop: its send times and recommendations fitted by shop-crm's own models, three
campaigns with a 50% holdout on three days (a large planted effect sent at each customer's best
hour, a planted effect of zero sent at a fixed hour, a small one linking to the customer's
recommendations), pushes through firebase-admin to the fake FCM every hour as the DAG would,
then a week of reactions, loaded and built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm import db
from crm.simulate import experiment
from crm.simulate.react import react
from crm.simulate.truth import (
    campaign_truth,
    read_reactions,
    recommendation_rates,
    send_hour_rates,
)
from tests.conftest import ML_DB, temp_database

START = datetime(2026, 2, 26, 6, 0, tzinfo=UTC)  # the day after the ML shop's history


@pytest.fixture(scope="module")
def loop(
    ml_shop: tuple[str, Path], pg_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    home = tmp_path_factory.mktemp("loop")
    with temp_database(pg_server_url, "crm_test_loop", ML_DB) as url:
        db.upgrade(url)
        run = experiment.run(url, ml_shop[1], home / "reactions", START)
        yield url, read_reactions(run.reactions)


def test_measured_uplift_and_revenue_cover_the_planted_truth(
    loop: tuple[str, list[dict[str, Any]]],
) -> None:
    url, reactions = loop
    rows = {c.campaign_id: c for c in campaign_truth(url, reactions)}
    assert set(rows) == {"offer", "nothing", "picks"}
    for c in rows.values():  # a 50% holdout of a real audience
        assert c.treated > 150 and c.held_out > 150, c
    offer, nothing = rows["offer"], rows["nothing"]
    # the planted effect is there, and large against the interval: it is measured
    assert offer.true_uplift > 0.05 and offer.uplift_ci and offer.uplift_ci[0] > 0, offer
    # ... and nothing where none was planted: the truth is exactly 0 and the interval holds it
    assert nothing.true_uplift == 0 and nothing.true_incremental_revenue == 0
    assert nothing.uplift_ci and nothing.uplift_ci[0] <= 0 <= nothing.uplift_ci[1], nothing
    # 95% intervals: each covers the truth with probability ~0.95, so all three of a kind miss
    # together with probability ~1e-4 and two or more with ~0.007; at least two of three must
    # cover, for conversion and for revenue
    assert sum(bool(c.covered) for c in rows.values()) >= 2, rows
    assert sum(bool(c.revenue_covered) for c in rows.values()) >= 2, rows
    # the measurement is of the truth, not merely near it: within two interval half-widths
    for c in rows.values():
        assert c.uplift is not None and c.uplift_ci is not None
        half = (c.uplift_ci[1] - c.uplift_ci[0]) / 2
        assert abs(c.uplift - c.true_uplift) < 2 * half, c


def _z(a: float, b: float, na: int, nb: int) -> float:
    """Standard error of a difference of two proportions."""
    return math.sqrt(a * (1 - a) / na + b * (1 - b) / nb)


def test_pushes_at_the_best_hour_are_opened_more_by_about_the_planted_gain(
    loop: tuple[str, list[dict[str, Any]]],
) -> None:
    url, reactions = loop
    rates = send_hour_rates(url, reactions)
    best, other = rates["best hour"], rates["another hour"]
    assert best.n > 150 and other.n > 150, rates
    planted_gain = best.planted - other.planted
    measured_gain = best.measured - other.measured
    se = _z(best.measured, other.measured, best.n, other.n)
    # the best hours shop-crm chose are truly better (planted), and the data show it
    assert planted_gain > 0.05, rates
    assert measured_gain > 2 * se, rates
    assert abs(measured_gain - planted_gain) < 3 * se, rates
    # each group's measured open rate is its planted one
    for r in rates.values():
        assert abs(r.measured - r.planted) < 3 * math.sqrt(r.planted * (1 - r.planted) / r.n)


def test_recommended_products_are_clicked_and_bought_more_than_bestsellers_as_planted(
    loop: tuple[str, list[dict[str, Any]]],
) -> None:
    url, reactions = loop
    rates = recommendation_rates(url, reactions)
    (rec_click, rec_buy), (pop_click, pop_buy) = rates["recommendations"], rates["bestsellers"]
    assert rec_click.n > 100 and rec_click.n == pop_click.n, rates
    for mine, theirs in ((rec_click, pop_click), (rec_buy, pop_buy)):
        se = _z(mine.measured, theirs.measured, mine.n, theirs.n)
        planted, measured = mine.planted - theirs.planted, mine.measured - theirs.measured
        assert planted > 0 and measured > 2 * se, rates
        assert abs(measured - planted) < 3 * se, rates


def test_the_reactions_are_deterministic_and_the_holdout_gets_nothing(
    loop: tuple[str, list[dict[str, Any]]], ml_shop: tuple[str, Path], tmp_path: Path
) -> None:
    url, reactions = loop
    again = react(
        ml_shop[1], url, tmp_path / "again", days=experiment.DAYS, effects=experiment.PLANTED
    )
    assert again.deliveries == len(reactions)
    assert read_reactions(tmp_path / "again") == reactions
    held = [r for r in reactions if r["state"] == "held_out"]
    assert held and not any(r["received"] or r["orders"] or r["shown"] for r in held)
    # the draw of the effect is made for the held-out members too, at the planted rate
    offer = [r for r in held if r["campaign_id"] == "offer"]
    share = sum(r["would_convert"] for r in offer) / len(offer)
    planted = sum(r["planted_conversion"] for r in offer) / len(offer)
    assert abs(share - planted) < 3 * math.sqrt(planted * (1 - planted) / len(offer))


def test_email_and_push_reactions_carry_the_delivery_and_keep_the_contract(
    ml_shop: tuple[str, Path], tmp_path: Path
) -> None:
    """Without a database: synthetic deliveries to the shop's registered customers, by e-mail
    and push, linking to recommendations; every event emitted passes the loader's contract and
    each receipt and open names its delivery."""
    from datetime import timedelta

    import orjson

    from crm.ingest.validate import Limits, parse_line
    from crm.simulate.react import Delivery, Reactions, read_config

    cfg = read_config(ml_shop[1])
    r = Reactions(cfg, tmp_path / "out", experiment.PLANTED, seed=1)
    r.replay()
    start = START.replace(hour=0)
    people = [p for p in r.sim.people if p.registered_day is not None][:300]
    products = tuple(x.product_id for x in r.sim.products[:3])
    best = [x.product_id for x in r.sim.products[10:16]]
    end = START + timedelta(days=7)
    for i, p in enumerate(people):
        channel = "email" if i % 2 else "push"
        at = START + timedelta(minutes=i)
        d = Delivery(i + 1, "picks", p.user_id, channel, "sent", "active", START, at,
                     "shop://recommendations", products)  # fmt: skip
        r.react(d, best, start, end)
    limits = Limits(1 << 20, 32, START - timedelta(days=400), START + timedelta(days=30))
    # one per messageId (the simulated clients retry some calls, as real ones do)
    lines = [line for day in r.sim.buffers.values() for _, line in day]
    for line in lines:
        parse_line(line, limits)  # raises on anything out of contract
    events = list({e["messageId"]: e for e in map(orjson.loads, lines)}.values())
    by_event: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_event.setdefault(ev.get("event", ev["type"]), []).append(ev)
    emails = [x for x in r.truth if x["channel"] == "email"]
    pushes = [x for x in r.truth if x["channel"] == "push" and x["received"]]
    assert len(by_event["Email Delivered"]) == len(emails) and pushes
    assert len(by_event["Push Notification Received"]) == len(pushes)
    opened = sum(x["opened"] for x in emails)
    assert 0 < opened == len(by_event["Email Opened"]) == len(by_event["Email Link Clicked"])
    for name in ("Email Delivered", "Email Opened", "Push Notification Received",
                 "Push Notification Tapped"):  # fmt: skip
        ids = {e["properties"]["delivery_id"] for e in by_event[name]}
        assert ids <= {str(x["delivery_id"]) for x in r.truth}, name
    # an opened message shows the recommendations screen: both rows, three products each
    lists = by_event["Product List Viewed"]
    assert len(lists) == 2 * sum(x.get("opened", False) for x in r.truth)
    assert {len(e["properties"]["products"]) for e in lists} == {3}
