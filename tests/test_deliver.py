"""Delivery against a copy of the ML shop, the real firebase-admin SDK, the fake FCM and a real
Redis: slots in each customer's hours, holdout, consent and caps, every FCM error class, and a
worker that dies after claiming."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from crm import db
from crm.settings import PROJECT_ROOT, Settings
from notify.campaigns import load_campaign
from notify.deliver import CLAIM, plan, send_due, zone
from notify.fake_fcm import FakeFcm
from notify.fcm import FcmSender
from tests.conftest import ML_DB, temp_database

NOW = datetime(2026, 2, 27, 6, 0, tzinfo=UTC)


@pytest.fixture
def shop(ml_shop: tuple[str, Path], pg_server_url: str) -> Iterator[str]:
    """A private copy of the ML shop database (deliveries write to it)."""
    with temp_database(pg_server_url, "crm_test_deliver", ML_DB) as url:
        db.upgrade(url)
        yield url


@pytest.fixture
def settings(shop: str, tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=shop, home=tmp_path / "home", push_cap_per_day=5
    )


@pytest.fixture
def redis_(settings: Settings):  # type: ignore[no-untyped-def]
    from ml.publish import redis_client

    return redis_client(settings)


def campaign(name: str = "active_recommendations", **change: object):  # type: ignore[no-untyped-def]
    c = load_campaign(PROJECT_ROOT / "campaigns" / f"{name}.yaml")
    return c.model_copy(update={"channels": ["push"], **change})


def rows(url: str, where: str = "true") -> list[tuple]:  # type: ignore[type-arg]
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"select delivery_id, customer_id, state, slot, reason, attempts from crm.deliveries"
            f" where {where} order by delivery_id"
        ).fetchall()


def test_each_planned_push_is_sent_once_at_an_allowed_local_hour(
    shop: str, settings: Settings, fake: FakeFcm, sender: FcmSender, redis_
) -> None:  # type: ignore[no-untyped-def]
    c = campaign()
    with psycopg.connect(shop) as conn:
        counts = plan(conn, c, NOW, settings)
        conn.commit()
        zones = dict(
            conn.execute("select customer_id, time_zone from marts.dim_customers").fetchall()
        )
    assert counts["planned"] > 50 and counts["held_out"] > 0
    planned = rows(shop, "state = 'planned'")
    for _, customer, _, slot, _, _ in planned:
        local = slot.astimezone(zone(zones[customer]))
        assert 9 <= local.hour < 21 and local.minute == 0 and slot >= NOW
    totals = send_due(shop, sender, redis_, now=NOW + timedelta(days=2), settings=settings)
    assert totals["sent"] == len(planned) - totals["suppressed"] - totals["failed"]
    delivered = [m["data"]["delivery_id"] for m in fake.sent]
    assert len(delivered) == len(set(delivered)) == totals["sent"]
    # re-running either step sends nothing more
    with psycopg.connect(shop) as conn:
        assert sum(plan(conn, c, NOW + timedelta(hours=1), settings).values()) == 0
        conn.commit()
    assert not send_due(shop, sender, redis_, now=NOW + timedelta(days=3), settings=settings)
    assert len(fake.sent) == totals["sent"]
    held = rows(shop, "state = 'held_out'")
    assert held and not {str(r[0]) for r in held} & set(delivered)


def test_a_worker_that_died_after_claiming_is_taken_over_after_its_lease(
    shop: str, settings: Settings, fake: FakeFcm, sender: FcmSender, redis_
) -> None:  # type: ignore[no-untyped-def]
    c = campaign()
    with psycopg.connect(shop) as conn:
        plan(conn, c, NOW, settings)
        conn.commit()
    due = NOW + timedelta(days=2)
    with psycopg.connect(shop, autocommit=True) as conn:  # claims 40, then "dies"
        claimed = conn.execute(CLAIM, {"now": due, "lease": 300, "limit": 40}).fetchall()
    assert len(claimed) == 40
    soon = send_due(shop, sender, redis_, now=due + timedelta(seconds=10),
                    settings=settings)  # fmt: skip
    assert len(rows(shop, "state = 'sending'")) == 40  # still leased to the dead worker
    later = send_due(shop, sender, redis_, now=due + timedelta(seconds=400),
                     settings=settings)  # fmt: skip
    assert later["sent"] + later["suppressed"] + later["failed"] == 40
    assert not rows(shop, "state in ('sending', 'planned')")
    delivered = [m["data"]["delivery_id"] for m in fake.sent]
    assert len(delivered) == len(set(delivered)) == soon["sent"] + later["sent"]


def test_fcm_errors_unregistered_tokens_and_quota_retries(
    shop: str, settings: Settings, redis_
) -> None:  # type: ignore[no-untyped-def]
    c = campaign()
    with psycopg.connect(shop) as conn:
        plan(conn, c, NOW, settings)
        victim = conn.execute(
            "select customer_id from crm.deliveries where state = 'planned' limit 1"
        ).fetchone()[0]
        conn.execute(
            "update marts.push_devices set push_token = 'unregistered-' || device_id"
            " where customer_id = %s",
            (victim,),
        )
        conn.commit()
    due = NOW + timedelta(days=2)
    with FakeFcm(quota_rate=1.0, retry_after=120) as storm:
        s = FcmSender("test", endpoint=storm.endpoint, name="storm")
        try:
            first = send_due(shop, s, redis_, now=due, settings=settings)
        finally:
            s.close()
    assert first["planned"] > 0 and not storm.sent  # all back to planned, later
    retry = rows(shop, "state = 'planned'")
    assert all(r[3] >= due + timedelta(seconds=120) and r[5] == 1 for r in retry)
    with FakeFcm() as ok:
        s = FcmSender("test", endpoint=ok.endpoint, name="ok")
        try:
            second = send_due(shop, s, redis_, now=due + timedelta(hours=1),
                              settings=settings)  # fmt: skip
            # the unregistered token failed once, is recorded, and is never used again
            failed = rows(shop, f"customer_id = '{victim}'")
        finally:
            s.close()
    assert second["sent"] == len(ok.sent) > 0
    assert failed[0][2] == "failed" and "Unregistered" in failed[0][4]
    with psycopg.connect(shop) as conn:
        assert conn.execute("select count(*) from crm.invalid_tokens").fetchone()[0] >= 1


def test_consent_withdrawn_after_planning_and_the_daily_cap_suppress(
    shop: str, tmp_path: Path, fake: FakeFcm, sender: FcmSender
) -> None:
    from ml.publish import redis_client

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=shop, home=tmp_path / "h", push_cap_per_day=1
    )
    r = redis_client(settings)
    a, b = campaign(), campaign("buyer_offers", audience=campaign().audience)
    with psycopg.connect(shop) as conn:
        plan(conn, a, NOW, settings)
        plan(conn, b, NOW, settings)
        withdrawn = conn.execute(
            "select customer_id from crm.deliveries where state = 'planned' limit 1"
        ).fetchone()[0]
        conn.execute(
            "update marts.dim_customers set push_consent = false where customer_id = %s",
            (withdrawn,),
        )
        conn.commit()
    totals = send_due(shop, sender, r, now=NOW + timedelta(days=2),
                      settings=settings)  # fmt: skip
    reasons = {row[4] for row in rows(shop, f"customer_id = '{withdrawn}' and state <> 'held_out'")}
    assert reasons == {"push consent withdrawn"}
    assert totals["suppressed"] > 0
    capped = rows(shop, "reason = 'frequency cap'")
    assert capped  # customers in both audiences got one push that day, not two
    with psycopg.connect(shop) as conn:
        twice = conn.execute(
            "select count(*) from (select customer_id from crm.deliveries where state = 'sent'"
            " group by customer_id having count(*) > 1) t"
        ).fetchone()[0]
    assert twice == 0
