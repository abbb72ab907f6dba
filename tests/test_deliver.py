"""Delivery against a copy of the ML shop, the real firebase-admin SDK, the fake FCM and a real
Redis: slots in each customer's hours, holdout, consent and caps, every FCM error class, and a
worker that dies after claiming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pendulum
import psycopg
import pytest

from crm.settings import PROJECT_ROOT, Settings
from notify.campaigns import Schedule, SendTime, load_campaign
from notify.deliver import CLAIM, due_occurrence, plan, send_due, zone
from notify.fake_fcm import FakeFcm
from notify.fcm import FcmSender
from tests.conftest import scalar

NOW = datetime(2026, 2, 27, 6, 0, tzinfo=UTC)


@pytest.fixture
def settings(shop: str, tmp_path: Path) -> Settings:
    return Settings(_env_file=None, database_url=shop, home=tmp_path / "home", push_cap_per_day=5)


@pytest.fixture
def redis_(settings: Settings):
    from ml.publish import redis_client

    return redis_client(settings)


def campaign(name: str = "active_recommendations", **change: object):
    c = load_campaign(PROJECT_ROOT / "campaigns" / f"{name}.yaml")
    return c.model_copy(update={"channels": ["push"], **change})


def rows(url: str, where: str = "true") -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"select delivery_id, customer_id, state, slot, reason, attempts from crm.deliveries"
            f" where {where} order by delivery_id"
        ).fetchall()


def test_each_planned_push_is_sent_once_at_an_allowed_local_hour(
    shop: str, settings: Settings, fake: FakeFcm, sender: FcmSender, redis_
) -> None:
    c = campaign()
    with psycopg.connect(shop) as conn:
        counts = plan(conn, c, NOW, settings)
        conn.commit()
        zones: dict[str, str] = dict(
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


def test_several_sender_processes_share_the_work_and_never_a_delivery(
    shop: str, settings: Settings, fake: FakeFcm, redis_, monkeypatch: pytest.MonkeyPatch
) -> None:
    from notify import run

    with psycopg.connect(shop) as conn:
        plan(conn, campaign(), NOW, settings)
        conn.commit()
    planned = {str(r[0]) for r in rows(shop, "state = 'planned'")}
    monkeypatch.setattr(run, "PARALLEL_MIN", 10)  # worth a process from 10 due deliveries
    parallel = settings.model_copy(update={"send_processes": 3, "fcm_endpoint": fake.endpoint,
                                           "fcm_ca_file": fake.ca_file,
                                           "send_batch": 20})  # a batch for each  # fmt: skip
    totals = run.send_now(shop, parallel, now=NOW + timedelta(days=2))
    delivered = [m["data"]["delivery_id"] for m in fake.sent]
    assert len(delivered) == len(set(delivered)) == totals["sent"] > 0
    assert sum(totals.values()) == len(planned) and set(delivered) <= planned
    assert not rows(shop, "state in ('planned', 'sending')")
    assert len(fake.clients) >= 2  # more than one process sent (one HTTP/2 connection each)


def test_a_worker_that_died_after_claiming_is_taken_over_after_its_lease(
    shop: str, settings: Settings, fake: FakeFcm, sender: FcmSender, redis_
) -> None:
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
) -> None:
    c = campaign()
    with psycopg.connect(shop) as conn:
        plan(conn, c, NOW, settings)
        victim = scalar(
            conn, "select customer_id from crm.deliveries where state = 'planned' limit 1"
        )
        conn.execute(
            "update marts.push_devices set push_token = 'unregistered-' || device_id"
            " where customer_id = %s",
            (victim,),
        )
        conn.commit()
    due = NOW + timedelta(days=2)
    with FakeFcm(quota_rate=1.0, retry_after=120) as storm:
        s = FcmSender("test", endpoint=storm.endpoint, name="storm", ca_file=storm.ca_file)
        try:
            first = send_due(shop, s, redis_, now=due, settings=settings)
        finally:
            s.close()
    assert first["planned"] > 0 and not storm.sent  # all back to planned, later
    retry = rows(shop, "state = 'planned'")
    assert all(r[3] >= due + timedelta(seconds=120) and r[5] == 1 for r in retry)
    with FakeFcm() as ok:
        s = FcmSender("test", endpoint=ok.endpoint, name="ok", ca_file=ok.ca_file)
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
        assert scalar(conn, "select count(*) from crm.invalid_tokens") >= 1


def test_consent_withdrawn_after_planning_and_the_daily_cap_suppress(
    shop: str, tmp_path: Path, fake: FakeFcm, sender: FcmSender
) -> None:
    from ml.publish import redis_client

    settings = Settings(_env_file=None, database_url=shop, home=tmp_path / "h", push_cap_per_day=1)
    r = redis_client(settings)
    # the same schedule: both are due at NOW, so customers in both audiences meet the cap
    a = campaign()
    b = campaign("buyer_offers", audience=a.audience, schedule=a.schedule)
    with psycopg.connect(shop) as conn:
        plan(conn, a, NOW, settings)
        plan(conn, b, NOW, settings)
        withdrawn = scalar(
            conn, "select customer_id from crm.deliveries where state = 'planned' limit 1"
        )
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
        twice = scalar(
            conn,
            "select count(*) from (select customer_id from crm.deliveries where state = 'sent'"
            " group by customer_id having count(*) > 1) t",
        )
    assert twice == 0


def test_a_recurring_campaign_plans_each_occurrence_up_to_its_cap(
    shop: str, settings: Settings
) -> None:
    weekly = campaign()  # Thursdays 06:00 UTC, cap 52
    assert due_occurrence(weekly, NOW) == datetime(2026, 2, 26, 6, tzinfo=UTC)
    once = campaign(cap_per_customer=1)
    with psycopg.connect(shop) as conn:
        first = plan(conn, weekly, NOW, settings)
        again = plan(conn, weekly, NOW + timedelta(hours=12), settings)  # same occurrence
        nxt = plan(conn, weekly, NOW + timedelta(days=7), settings)
        capped = plan(conn, once.model_copy(update={"id": "weekly-once"}), NOW, settings)
        capped_next = plan(
            conn, once.model_copy(update={"id": "weekly-once"}), NOW + timedelta(days=7), settings
        )
        conn.commit()
        occurrences = conn.execute(
            "select occurrence, count(*) from crm.deliveries where campaign_id = %s"
            " group by 1 order by 1",
            (weekly.id,),
        ).fetchall()
        held = scalar(
            conn,
            "select count(*) from crm.deliveries a join crm.deliveries b using (campaign_id,"
            " customer_id) where a.campaign_id = %s and a.occurrence < b.occurrence"
            " and (a.state = 'held_out') <> (b.state = 'held_out')",
            (weekly.id,),
        )
    assert sum(first.values()) > 50 and not again and sum(nxt.values()) == sum(first.values())
    assert [o for o, _ in occurrences] == [
        datetime(2026, 2, 26, 6, tzinfo=UTC),
        datetime(2026, 3, 5, 6, tzinfo=UTC),
    ]
    assert held == 0  # the same people are held out at every occurrence
    # cap 1: only those unreachable the first week (in either arm) come back the next
    assert sum(capped.values()) == sum(first.values())
    week1 = "campaign_id = 'weekly-once' and occurrence = '2026-02-26 06:00+00'"
    unreachable = [r for r in rows(shop, week1) if "no consent" in (r[4] or "")]
    assert capped["suppressed"] < len(unreachable) < sum(capped.values())
    assert sum(capped_next.values()) == len(unreachable)


def test_a_recurring_tick_is_started_only_within_its_grace_period() -> None:
    weekly = campaign()  # Thursdays 06:00 UTC: a quarter of a week is 42 hours
    thursday = datetime(2026, 2, 12, 6, tzinfo=UTC)
    assert due_occurrence(weekly, thursday) == thursday  # a run at the tick itself
    assert due_occurrence(weekly, thursday + timedelta(hours=42)) == thursday
    assert due_occurrence(weekly, thursday + timedelta(hours=42, minutes=1)) is None
    # a run on Wednesday does not start last Thursday's occurrence a day before the next
    assert due_occurrence(weekly, thursday - timedelta(days=1)) is None
    # Airflow hands the DAG pendulum's datetimes
    assert due_occurrence(weekly, pendulum.datetime(2026, 2, 13, 8, 5, tz="UTC")) == thursday
    daily = campaign(schedule=Schedule(kind="recurring", cron="30 9 * * *"))
    nine = datetime(2026, 2, 12, 9, 30, tzinfo=UTC)
    assert due_occurrence(daily, nine + timedelta(hours=6)) == nine
    assert due_occurrence(daily, nine + timedelta(hours=7)) is None
    tight = campaign(schedule=Schedule(kind="recurring", cron="30 9 * * *", grace_hours=0.5))
    assert due_occurrence(tight, nine + timedelta(minutes=30)) == nine
    assert due_occurrence(tight, nine + timedelta(minutes=31)) is None
    with pytest.raises(ValueError, match="grace_hours"):
        Schedule(kind="once", at=thursday, grace_hours=1)


def test_the_end_date_stops_occurrences_and_slots_after_it(shop: str, settings: Settings) -> None:
    late = campaign(
        send_time=SendTime(mode="fixed", hour=20), end_date=NOW.date(), holdout_percent=0
    )
    assert due_occurrence(late, NOW + timedelta(days=1)) is None
    with psycopg.connect(shop) as conn:
        counts = plan(conn, late, NOW.replace(hour=22), settings)  # 20:00 UTC has passed
        conn.commit()
        zones: dict[str, str] = dict(
            conn.execute("select customer_id, time_zone from marts.dim_customers")
        )
    assert counts["suppressed"] > 0
    reachable = "state <> 'held_out' and coalesce(reason, '') not like 'no consent%'"
    for _, customer, state, slot, reason, _ in rows(shop, reachable):
        last_day = slot.astimezone(zone(zones[customer])).date() <= late.end_date
        assert last_day == (state == "planned"), (state, reason)


def test_the_became_inactive_trigger_fires_for_exactly_the_customers_who_lapsed(shop: str) -> None:
    import pandas as pd

    from notify.audience import triggered

    with psycopg.connect(shop) as conn:
        cur = conn.execute(
            "select customer_id, day, lifecycle_segment from marts.customer_segments_daily"
        )
        days = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or []])
        at = datetime.combine(days.day.max(), datetime.min.time(), UTC) + timedelta(hours=19)
        got_lapse = set(triggered(conn, campaign("winback_inactive"), at))
    day = max(d for d in days.day if d <= at.date())
    today = days[days.day == day].set_index("customer_id").lifecycle_segment
    before = days[days.day == day - timedelta(days=1)].set_index("customer_id").lifecycle_segment
    both = today.index.intersection(before.index)
    expected = {c for c in both if today[c] == "inactive" and before[c] != "inactive"}
    assert got_lapse == expected and got_lapse


def test_webhook_channel_through_apprise_and_an_unconfigured_channel_is_never_chosen(
    shop: str, settings: Settings, sender: FcmSender, redis_, hook
) -> None:
    from notify.channels import AppriseSender

    host, got = hook
    with psycopg.connect(shop) as conn:
        people = [r[0] for r in conn.execute(
            "select customer_id from marts.dim_customers where lifecycle_segment = 'active'"
            " order by customer_id limit 6").fetchall()]  # fmt: skip
        conn.cursor().executemany(
            "insert into crm.channel_addresses (customer_id, channel, address) values (%s, %s, %s)",
            [(c, "webhook", ("down-" if i == 0 else "") + f"c{i}") for i, c in enumerate(people)],
        )
        conn.commit()
    urls = {"webhook": f"json://{host}/{{address}}"}
    configured = settings.model_copy(update={"apprise_urls": urls})
    both = campaign(channels=["webhook", "email"], holdout_percent=0)
    with psycopg.connect(shop) as conn:
        plan(conn, both, NOW, configured)  # e-mail has no URL: never chosen
        conn.commit()
        chosen: dict[str, int] = dict(conn.execute(
            "select channel, count(*) from crm.deliveries where state = 'planned' group by 1"
        ).fetchall())  # fmt: skip
    assert chosen == {"webhook": len(people)}
    totals = send_due(shop, sender, redis_, now=NOW + timedelta(days=2), settings=configured,
                      apprise=AppriseSender(urls))  # fmt: skip
    assert totals == {"sent": len(people) - 1, "failed": 1}
    assert sorted(p for p, _ in got) == [f"/c{i}" for i in range(1, len(people))]
    assert all(b["title"].startswith("New in") for _, b in got)
    (failed,) = rows(shop, "state = 'failed'")
    assert "down-c0" not in failed[4] and failed[4]  # the reason, without the address


KILLED_SENDER = """
import sys
from datetime import datetime
import redis
from crm.settings import Settings
from notify.deliver import send_due
from notify.fcm import FcmSender

url, endpoint, ca_file, socket, home, now = sys.argv[1:]
settings = Settings(_env_file=None, database_url=url, home=home, push_cap_per_day=5)
send_due(url, FcmSender("test", endpoint=endpoint, name="doomed", ca_file=ca_file),
         redis.Redis(unix_socket_path=socket), now=datetime.fromisoformat(now), batch=100,
         settings=settings)
"""


def test_a_sender_killed_mid_batch_loses_nothing_and_repeats_only_its_batch(
    shop: str, settings: Settings, fake: FakeFcm, sender: FcmSender, redis_, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    c = campaign()
    with psycopg.connect(shop) as conn:
        plan(conn, c, NOW, settings)
        conn.commit()
    planned = {r[0] for r in rows(shop, "state = 'planned'")}
    due = NOW + timedelta(days=2)
    with FakeFcm(latency_ms=300) as slow:  # each batch is in flight for 300 ms
        script = tmp_path / "sender.py"
        script.write_text(KILLED_SENDER)
        args = [shop, slow.endpoint, str(slow.ca_file), redis_.socket_file, str(settings.home),
                due.isoformat()]  # fmt: skip
        proc = subprocess.Popen([sys.executable, str(script), *args])
        deadline = time.monotonic() + 120
        while slow.requests <= 150 and time.monotonic() < deadline:  # the 2nd batch is out
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.5)  # the fake finishes what it had accepted
        assert slow.requests > 150, "the sender never got to its second batch"
        accepted_before = [int(m["data"]["delivery_id"]) for m in slow.sent]
    in_flight = {r[0] for r in rows(shop, "state = 'sending'")}
    assert 0 < len(in_flight) <= 100  # one batch claimed and never recorded
    after_lease = due + timedelta(seconds=settings.send_lease_seconds + 1)
    send_due(shop, sender, redis_, now=after_lease, settings=settings)
    assert not rows(shop, "state in ('planned', 'sending')")  # nothing planned is forgotten
    sent_rows = {r[0] for r in rows(shop, "state = 'sent'")}
    assert sent_rows <= planned
    delivered = accepted_before + [int(m["data"]["delivery_id"]) for m in fake.sent]
    assert set(delivered) == sent_rows | (set(accepted_before) & in_flight)
    repeated = {d for d in delivered if delivered.count(d) > 1}
    assert repeated <= in_flight  # only the batch in flight at the kill can go twice


def test_the_suppression_list_stops_planning_and_a_send_already_planned(
    shop: str, settings: Settings, fake: FakeFcm, sender: FcmSender, redis_
) -> None:
    from notify import suppressions

    c = campaign(holdout_percent=0)
    with psycopg.connect(shop) as conn:
        from notify.audience import select_audience

        members = select_audience(conn, c)
        reachable = members[members.push_consent].customer_id
        before, after = sorted(reachable)[:2]
        assert suppressions.add(conn, before, "complaint")
        with pytest.raises(ValueError):
            suppressions.add(conn, before, " ")
        plan(conn, c, NOW, settings)
        assert suppressions.add(conn, after, "legal hold", channel="push")
        conn.commit()
    send_due(shop, sender, redis_, now=NOW + timedelta(days=2), settings=settings)
    (first,) = rows(shop, f"customer_id = '{before}'")
    (second,) = rows(shop, f"customer_id = '{after}'")
    assert first[2:5:2] == ("suppressed", "on the suppression list")
    assert second[2] == "suppressed" and second[4] == "on the suppression list"
    sent_to = {m["data"]["delivery_id"] for m in fake.sent}
    assert str(first[0]) not in sent_to and str(second[0]) not in sent_to and sent_to


def test_without_fcm_credentials_pushes_wait_and_nothing_goes_to_google(
    shop: str, settings: Settings, redis_
) -> None:
    from notify.deliver import NOT_CONFIGURED

    c = campaign()
    with psycopg.connect(shop) as conn:
        plan(conn, c, NOW, settings)
        conn.commit()
    unconfigured = FcmSender("test", name="unconfigured")  # no credentials, no endpoint
    try:
        due = NOW + timedelta(days=2)
        totals = send_due(shop, unconfigured, redis_, now=due, settings=settings)
    finally:
        unconfigured.close()
    assert set(totals) <= {"planned", "suppressed"} and totals["planned"] > 0
    waiting = rows(shop, "state = 'planned'")
    assert waiting and all(r[4] == NOT_CONFIGURED and r[3] > due for r in waiting)
