"""A controlled experiment on a simulated shop: shop-crm sends, the shop reacts, shop-crm measures.

Used by the loop's tests (``tests/test_loop.py``) and its benchmark (``bench/loop_bench.py``):
on a loaded and built simulated shop, fit shop-crm's send-time model and recommender and
publish them to ``ml.*``; plan three campaigns with a 50% holdout on three consecutive days
(``offer``: a large planted effect, sent at each customer's best hour; ``nothing``: a planted
effect of zero, sent at a fixed hour; ``picks``: a small effect, linking to the customer's
recommendations); send every hour as the ``send_campaigns`` DAG does, through firebase-admin
to the fake FCM; let the shop react (``crm.simulate.react``), load the reactions and build.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from crm import db
from crm.settings import Settings
from crm.simulate.react import Effect, PlantedEffects, ReactSummary, react
from notify.campaigns import Campaign, parse_campaign

DAYS = 7  # days of reactions: the last campaign's 72 h window closes within them
PLANTED = PlantedEffects(
    campaigns={
        "offer": Effect(0.30, 1.5),
        "nothing": Effect(0.0, 1.0),
        "picks": Effect(0.05, 1.0),
    },
    default=Effect(0.0),
    segments={"new": 1.2, "repeat_buyer": 0.8},
)


def campaign(cid: str, at: datetime, send_time: dict[str, Any], link: str) -> Campaign:
    """A one-off push to every known customer who is not inactive or lost, half held out."""
    return parse_campaign(
        {
            "id": cid,
            "name": cid,
            "audience": {"lifecycle": ["new", "active", "buyer", "repeat_buyer"],
                         "filters": [{"field": "is_known", "op": "eq", "value": True}]},
            "messages": [{"segment": "*", "locale": "*", "title": "Hello", "body": "For you",
                          "link": link}],
            "channels": ["push"],
            "schedule": {"kind": "once", "at": at.isoformat()},
            "send_time": send_time,
            "holdout_percent": 50,
            "cap_per_customer": 5,
            "end_date": (at + timedelta(days=30)).date().isoformat(),
        },
        cid,
    )  # fmt: skip


def campaigns(start: datetime) -> list[Campaign]:
    best = {"mode": "best", "window": [9, 21]}
    day = timedelta(days=1)
    return [
        campaign("offer", start, best, "shop://home"),
        campaign("nothing", start + day, {"mode": "fixed", "hour": 15}, "shop://home"),
        campaign("picks", start + 2 * day, best, "shop://recommendations"),
    ]


def fit_models(url: str, scored_at: datetime) -> None:
    """shop-crm's send-time model and recommender fitted on the shop, published to ml.*."""
    from ml import publish
    from ml.data import load_snapshot
    from ml.recommend.ranker import Recommender
    from ml.sendtime import SendTimeModel

    snap = load_snapshot(url)
    frames = {
        "send_times": SendTimeModel().fit(snap).score(snap),
        "recommendations": Recommender(horizon_days=14, n=20, seed=0).fit(snap).score(snap),
    }
    versions = {
        "send_times": ("send_time", "crm_send_time", "experiment"),
        "recommendations": ("recommendations", "crm_recommendations", "experiment"),
    }
    publish.replace_tables(frames, versions, scored_at, url)


def send_hourly(url: str, settings: Settings, planned: list[Campaign], start: datetime,
                until: datetime) -> dict[str, int]:  # fmt: skip
    """Plan each campaign at its time and send what is due, every hour from ``start``."""
    from ml.publish import redis_client
    from notify.deliver import plan, send_due
    from notify.fake_fcm import FakeFcm
    from notify.fcm import FcmSender

    r = redis_client(settings)
    sent: dict[str, int] = {}
    with FakeFcm() as fake:
        sender = FcmSender("experiment", endpoint=fake.endpoint, name="experiment",
                           ca_file=fake.ca_file)  # fmt: skip
        try:
            tick = start
            while tick <= until:
                with psycopg.connect(url) as conn:
                    for c in planned:
                        if c.schedule.at == tick:
                            plan(conn, c, tick, settings)
                    conn.commit()
                for k, v in send_due(url, sender, r, now=tick, settings=settings).items():
                    sent[k] = sent.get(k, 0) + v
                tick += timedelta(hours=1)
        finally:
            sender.close()
    return sent


@dataclass
class Experiment:
    url: str
    reactions: Path
    summary: ReactSummary


def run(url: str, shop: Path, out: Path, start: datetime, *, seed: int | None = None,
        effects: PlantedEffects = PLANTED, days: int = DAYS,
        settings: Settings | None = None) -> Experiment:  # fmt: skip
    """The whole experiment on the loaded, built shop at ``url`` (simulated into ``shop``),
    ``start`` being the first hour after its history; reactions written into ``out``."""
    from crm.ingest.load import ingest_paths
    from crm.transform import build

    settings = settings or Settings(_env_file=None, database_url=url, home=out / "home",
                                    push_cap_per_day=5)  # fmt: skip
    fit_models(url, start - timedelta(hours=1))
    send_hourly(url, settings, campaigns(start), start, start + timedelta(days=3))
    summary = react(shop, url, out, days=days, seed=seed, effects=effects)
    ingest_paths(sorted((out / "events").iterdir()), settings=settings)
    db.set_clock(url, start + timedelta(days=days))
    build(url=url, capture=True)
    return Experiment(url, out, summary)
