"""Event-triggered journeys, on a built shop: events are loaded by the real loader, the journey
steps through them, and pushes go through the firebase-admin SDK to the fake FCM."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from crm.ingest.load import ingest_file
from crm.settings import PROJECT_ROOT, Settings
from notify.audience import in_holdout
from notify.campaigns import (
    Audience,
    Campaign,
    CampaignError,
    load_campaign,
    load_campaigns,
    parse_campaign,
)
from notify.deliver import send_due
from notify.fake_fcm import FakeFcm
from notify.fcm import FcmSender
from notify.journeys import set_paused, step

T0 = datetime(2026, 2, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(shop: str, tmp_path: Path) -> Settings:
    # no quiet hours unless a test sets them: the times below are the journey's own
    return Settings(_env_file=None, database_url=shop, home=tmp_path / "home",
                    quiet_hours=(0, 0), push_cap_per_day=10)  # fmt: skip


@pytest.fixture
def redis_(settings: Settings):
    from ml.publish import redis_client

    return redis_client(settings)


def journey(**schedule: Any) -> Campaign:
    c = load_campaign(PROJECT_ROOT / "campaigns" / "cart_reminder.yaml")
    return c.model_copy(
        update={"channels": ["push"], "schedule": c.schedule.model_copy(update=schedule)}
    )


def reachable(url: str, held_out: bool = False, n: int = 5) -> list[tuple[str, str]]:
    """(customer id, time zone) of known customers with push consent and a valid device, in
    (or out of) the cart_reminder holdout."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select c.customer_id, c.time_zone from marts.dim_customers c"
            " where c.push_consent and c.is_known and exists (select 1 from marts.push_devices d"
            " where d.customer_id = c.customer_id and d.is_valid) order by c.customer_id"
        ).fetchall()
    return [r for r in rows if in_holdout("cart_reminder", r[0], 10) == held_out][:n]


def call(event: str, at: datetime, user: str | None = None, anon: str | None = None,
         **properties: Any) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"messageId": str(uuid.uuid4()), "type": "track", "event": event,
                           "timestamp": at.isoformat(), "properties": properties}  # fmt: skip
    if user:
        out["userId"] = user
    out["anonymousId"] = anon or f"anon-{uuid.uuid4()}"
    return out


def cart(at: datetime, user: str | None = None, anon: str | None = None,
         price: float = 35.0) -> dict[str, Any]:  # fmt: skip
    return call("Product Added", at, user, anon, product_id="p00101", name="Blue scarf",
                price=price, currency="USD", quantity=1)  # fmt: skip


def order(at: datetime, user: str | None = None, anon: str | None = None) -> dict[str, Any]:
    return call("Order Completed", at, user, anon, order_id=f"o-{uuid.uuid4().hex[:8]}",
                total=35.0, revenue=35.0, currency="USD",
                products=[{"product_id": "p00101", "price": 35.0, "quantity": 1}])  # fmt: skip


def load(url: str, settings: Settings, tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    path = tmp_path / f"load-{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in calls))
    res = ingest_file(path, url=url, settings=settings, source="test")
    assert res.status == "loaded" and res.loaded == len(calls), res


def entries(url: str) -> dict[str, tuple[str, str | None, str | None]]:
    """trigger messageId -> (state, exit event, customer)."""
    with psycopg.connect(url) as conn:
        return {
            m: (s, x, c)
            for m, s, x, c in conn.execute(
                "select trigger_message_id, state, exit_event, customer_id"
                " from crm.journey_entries where campaign_id = 'cart_reminder'"
            )
        }


def deliveries(url: str, campaign: str = "cart_reminder") -> list[tuple[str, str, datetime, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select customer_id, state, slot, title from crm.deliveries"
            " where campaign_id = %s order by delivery_id",
            (campaign,),
        ).fetchall()


def test_an_abandoned_cart_gets_one_reminder_after_the_wait_and_an_order_cancels_it(
    shop: str, settings: Settings, tmp_path: Path, fake: FakeFcm, sender: FcmSender, redis_
) -> None:
    j = journey()
    step(shop, [j], T0, settings)  # the journey starts: it reads loads from now on
    (a, _), (b, _), (c, _), (d, _) = reachable(shop, n=4)
    carts = {
        "abandoned": cart(T0, a),
        "ordered": cart(T0, b),
        "cheap": cart(T0, c, price=5.0),  # below the journey's price >= 20: never enters
        "ordered late": cart(T0, d),
    }
    load(shop, settings, tmp_path, [*carts.values(), order(T0 + timedelta(minutes=20), b)])
    report = step(shop, [j], T0 + timedelta(minutes=30), settings)
    counts = report.journeys["cart_reminder"]
    assert counts["entered"] == 3 and counts["exited on Order Completed"] == 1
    assert counts["waiting"] == 2 and not deliveries(shop)
    # the order of d happened before the reminder was due but reaches us after the wait
    load(shop, settings, tmp_path, [order(T0 + timedelta(minutes=59), d)])
    step(shop, [j], T0 + timedelta(minutes=61), settings)
    state = entries(shop)
    assert carts["cheap"]["messageId"] not in state
    assert state[carts["abandoned"]["messageId"]] == ("planned", None, a)
    assert state[carts["ordered"]["messageId"]][:2] == ("exited", "Order Completed")
    assert state[carts["ordered late"]["messageId"]][:2] == ("exited", "Order Completed")
    [(who, what, slot, title)] = deliveries(shop)
    assert (who, what, slot) == (a, "planned", T0 + timedelta(minutes=61))
    assert title == "Blue scarf is still in your cart"  # the event's properties
    sent = send_due(shop, sender, redis_, now=T0 + timedelta(minutes=61), settings=settings)
    assert sent["sent"] == 1 and len(fake.sent) == 1
    # evaluated again, and the same load met again: nothing new
    step(shop, [j], T0 + timedelta(minutes=90), settings)
    load_again = tmp_path / "again.jsonl"
    load_again.write_text(json.dumps(carts["abandoned"]) + "\n")
    assert ingest_file(load_again, url=shop, settings=settings).duplicates == 1
    step(shop, [j], T0 + timedelta(hours=3), settings)
    assert len(deliveries(shop)) == 1
    assert not send_due(shop, sender, redis_, now=T0 + timedelta(hours=3), settings=settings)
    assert len(fake.sent) == 1


def test_an_order_that_arrived_before_its_late_cart_still_cancels_it(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    j = journey()
    step(shop, [j], T0, settings)
    [(a, _)] = reachable(shop, n=1)
    late_cart = cart(T0, a)
    load(shop, settings, tmp_path, [order(T0 + timedelta(minutes=10), a)])
    step(shop, [j], T0 + timedelta(minutes=15), settings)
    load(shop, settings, tmp_path, [late_cart])  # the phone was offline
    step(shop, [j], T0 + timedelta(minutes=70), settings)
    assert entries(shop)[late_cart["messageId"]][:2] == ("exited", "Order Completed")
    assert not deliveries(shop)


def test_quiet_hours_hold_the_reminder_until_the_morning(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    quiet = settings.model_copy(update={"quiet_hours": (21, 9)})
    j = journey()
    step(shop, [j], T0, quiet)
    [(a, tz)] = reachable(shop, n=1)
    zone = ZoneInfo(tz or "UTC")
    # a cart at 22:30 the customer's time: due at 23:30, in the quiet hours
    local = datetime(2026, 2, 27, 22, 30, tzinfo=zone)
    at = local.astimezone(UTC)
    step(shop, [j], at - timedelta(minutes=1), quiet)
    load(shop, quiet, tmp_path, [cart(at, a)])
    step(shop, [j], at + timedelta(minutes=61), quiet)
    [(who, state, slot, _)] = deliveries(shop)
    assert (who, state) == (a, "planned")
    assert slot.astimezone(zone) == datetime(2026, 2, 28, 9, 0, tzinfo=zone)


def test_the_holdout_arm_is_counted_and_gets_nothing(
    shop: str, settings: Settings, tmp_path: Path, fake: FakeFcm, sender: FcmSender, redis_
) -> None:
    j = journey()
    step(shop, [j], T0, settings)
    [(h, _)] = reachable(shop, held_out=True, n=1)
    load(shop, settings, tmp_path, [cart(T0, h)])
    step(shop, [j], T0 + timedelta(minutes=61), settings)
    [(who, state, _, _)] = deliveries(shop)
    assert (who, state) == (h, "held_out")
    assert not send_due(shop, sender, redis_, now=T0 + timedelta(hours=2), settings=settings)
    assert not fake.sent


def test_an_anonymous_device_is_reached_as_the_customer_it_was_stitched_to(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    j = journey()
    step(shop, [j], T0, settings)
    reach = {c for c, _ in reachable(shop, n=200)}
    with psycopg.connect(shop) as conn:
        devices = conn.execute(
            "select identifier, customer_id from intermediate.int_identities_stitched"
            " where identifier <> customer_id and customer_id = any(%s) limit 1",
            (sorted(reach),),
        ).fetchall()
    [(device, customer)] = devices
    anonymous = cart(T0, anon=device)
    load(shop, settings, tmp_path, [anonymous])
    step(shop, [j], T0 + timedelta(minutes=61), settings)
    assert entries(shop)[anonymous["messageId"]] == ("planned", None, customer)
    assert [d[0] for d in deliveries(shop)] == [customer]


def test_a_paused_journey_plans_nothing_and_overdue_entries_expire(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    j = journey(max_late_hours=2)
    step(shop, [j], T0, settings)
    [(a, _)] = reachable(shop, n=1)
    first = cart(T0, a)
    load(shop, settings, tmp_path, [first])
    with psycopg.connect(shop) as conn:
        assert set_paused(conn, "cart_reminder", True)
    assert step(shop, [j], T0 + timedelta(minutes=61), settings).journeys["cart_reminder"] == {
        "paused": 1
    }
    assert not deliveries(shop)
    with psycopg.connect(shop) as conn:
        set_paused(conn, "cart_reminder", False)
    step(shop, [j], T0 + timedelta(hours=4), settings)
    assert entries(shop)[first["messageId"]][0] == "expired"
    assert not deliveries(shop)


def test_the_second_step_goes_a_day_later_to_who_still_has_not_ordered(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    first, offer = journey().steps()
    assert (offer.id, offer.journey, offer.schedule.wait_minutes) == (
        "cart_reminder-offer", "cart_reminder", 1440)  # fmt: skip
    step(shop, [first, offer], T0, settings)
    (a, _), (b, _) = reachable(shop, n=2)
    # held out of the journey: of its first step, and so of every step
    [(h, _)] = [r for r in reachable(shop, held_out=True, n=200)
                if not in_holdout("cart_reminder-offer", r[0], 10)][:1]  # fmt: skip
    load(shop, settings, tmp_path, [cart(T0, a), cart(T0, b), cart(T0, h)])
    step(shop, [first, offer], T0 + timedelta(minutes=61), settings)
    assert {(w, s) for w, s, _, _ in deliveries(shop)} == {
        (a, "planned"), (b, "planned"), (h, "held_out")}  # fmt: skip
    assert not deliveries(shop, "cart_reminder-offer")
    load(shop, settings, tmp_path, [order(T0 + timedelta(hours=5), b)])
    report = step(shop, [first, offer], T0 + timedelta(hours=24, minutes=1), settings)
    assert report.journeys["cart_reminder-offer"]["exited on Order Completed"] == 1
    got = {w: (s, t) for w, s, _, t in deliveries(shop, "cart_reminder-offer")}
    assert got == {a: ("planned", "10% off Blue scarf, today only"),
                   h: ("held_out", "10% off Blue scarf, today only")}  # fmt: skip
    assert len(deliveries(shop)) == 3  # the first step is not planned again


def test_an_order_that_starts_a_journey_does_not_end_it(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    """A journey started by an order and cancelled by the next order (win-back after a
    first order): the starting order is not its own exit event."""
    c = load_campaign(PROJECT_ROOT / "campaigns" / "winback_first_order.yaml")
    j = c.model_copy(update={
        "channels": ["push"], "audience": Audience(),
        "schedule": c.schedule.model_copy(update={"wait_minutes": 60})})  # fmt: skip
    step(shop, [j], T0, settings)
    (a, _), (b, _) = [r for r in reachable(shop, n=200)
                      if not in_holdout("winback_first_order", r[0], 10)][:2]  # fmt: skip
    one, again = order(T0, b), order(T0 + timedelta(minutes=30), b)
    load(shop, settings, tmp_path, [order(T0, a), one, again])
    step(shop, [j], T0 + timedelta(minutes=61), settings)
    with psycopg.connect(shop) as conn:
        state: dict[str, str] = dict(conn.execute(
            "select trigger_message_id, state from crm.journey_entries"
            " where campaign_id = 'winback_first_order'").fetchall())  # fmt: skip
    assert state[one["messageId"]] == "exited" and state[again["messageId"]] == "waiting"
    assert [w for w, *_ in deliveries(shop, "winback_first_order")] == [a]


def test_the_day_one_flows_are_journeys_that_plan(shop: str, settings: Settings) -> None:
    flows = {c.id: c for c in load_campaigns(PROJECT_ROOT / "campaigns") if c.schedule.event}
    assert set(flows) == {"cart_reminder", "cart_reminder-offer", "browse_abandonment",
                          "post_purchase", "winback_first_order"}  # fmt: skip
    report = step(shop, list(flows.values()), T0, settings)
    assert set(report.journeys) == set(flows)


def test_the_audience_preview_of_a_journey_reads_recent_events_and_records_nothing(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    from notify.journeys import preview

    j = journey(wait_minutes=30)
    (a, _), (b, _) = reachable(shop, n=2)
    [(h, _)] = reachable(shop, held_out=True, n=1)
    now = datetime.now(UTC)
    carts = [
        cart(now - timedelta(minutes=45), a),
        cart(now, b),
        cart(now, h),
        cart(now - timedelta(minutes=80), b),
    ]  # the last: before the hour
    load(shop, settings, tmp_path, [*carts, order(now + timedelta(minutes=5), b),
                                    cart(now, a, price=5.0)])  # fmt: skip
    with psycopg.connect(shop) as conn:
        rows = {r["customer_id"]: r for r in preview(conn, j, 1, now + timedelta(minutes=10))}
        assert conn.execute("select count(*) from crm.journey_entries").fetchone() == (0,)
    assert set(rows) == {a, b, h} and len(rows) == 3  # not the cheap cart
    assert (rows[a]["due"], rows[a]["exited"]) == (True, False)
    assert (rows[b]["due"], rows[b]["exited"]) == (False, True)
    assert rows[h]["held_out"] and not rows[a]["held_out"] and rows[a]["known"]


def test_the_dry_run_of_a_journey_plans_recent_entries_with_their_event_and_records_nothing(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    from notify.run import run

    j = journey(wait_minutes=30)
    (a, _), (b, _) = reachable(shop, n=2)
    [(h, _)] = reachable(shop, held_out=True, n=1)
    now = datetime.now(UTC)
    calls = [cart(now - timedelta(minutes=40), a, price=42.0), cart(now - timedelta(minutes=20), a),
             cart(now - timedelta(minutes=30), b), order(now - timedelta(minutes=25), b),
             cart(now - timedelta(minutes=10), h), cart(now - timedelta(hours=3), b)]  # fmt: skip
    load(shop, settings, tmp_path, calls)
    report = run(shop, now, [j], dry_run=True, settings=settings, hours=2)
    counts = report.planned[j.id]
    # a's two carts, b's cart (cancelled by the order), h's; not b's cart of 3 hours ago
    assert (counts["entries"], counts["exited"]) == (4, 1)
    assert (counts["planned"], counts["held_out"]) == (1, 1)
    [sample] = report.samples[j.id]
    # a's first cart's event is the message's
    assert sample["title"] == "Blue scarf is still in your cart" and "42.0 USD" in sample["body"]
    with psycopg.connect(shop) as conn:
        for table in ("crm.deliveries", "crm.journey_entries", "crm.campaign_runs"):
            assert conn.execute(f"select count(*) from {table}").fetchone() == (0,), table


def test_control_pauses_a_journey_with_its_steps_and_shows_loads_not_read(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    from crm.errors import CrmError
    from notify.journeys import control

    first, offer = journey().steps()
    step(shop, [first, offer], T0, settings)
    [(a, _)] = reachable(shop, n=1)
    load(shop, settings, tmp_path, [cart(T0, a)])
    state = control(shop, [first, offer], stalled_minutes=0)
    assert {c: r["loads behind"] for c, r in state.items()} == {
        "cart_reminder": 1, "cart_reminder-offer": 1}  # fmt: skip
    step(shop, [first, offer], T0 + timedelta(minutes=1), settings)
    state = control(shop, [first, offer], pause=["cart_reminder"], stalled_minutes=0)
    waiting = {"paused": True, "entries": {"waiting": 1}, "loads behind": 0}
    assert state == {"cart_reminder": waiting, "cart_reminder-offer": waiting}
    load(shop, settings, tmp_path, [cart(T0, a)])
    assert step(shop, [first, offer], T0 + timedelta(minutes=2), settings).journeys == {
        "cart_reminder": {"paused": 1}, "cart_reminder-offer": {"paused": 1}}  # fmt: skip
    state = control(shop, [first, offer], resume=["cart_reminder"], stalled_minutes=0)
    assert [r["paused"] for r in state.values()] == [False, False]
    assert state["cart_reminder"]["loads behind"] == 1  # the load that came while paused
    with pytest.raises(CrmError, match="no journey"):
        control(shop, [first, offer], pause=["cart_reminder_typo"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(schedule={"kind": "recurring", "cron": "0 6 * * 4"}),
         "'followups' need an event trigger"),
        (lambda d: d["followups"][0].update(wait_minutes=30),
         "longer than the step before"),
        (lambda d: d["followups"].append(dict(d["followups"][0], wait_minutes=2000)),
         "each step needs its own name"),
        (lambda d: d["followups"][0].update(messages=d["messages"][1:]),
         "followups.0: Value error, messages need one fallback"),
    ],
)  # fmt: skip
def test_each_mistake_in_a_followup_is_reported_with_its_place(change, expected: str) -> None:
    import yaml

    data = yaml.safe_load((PROJECT_ROOT / "campaigns" / "cart_reminder.yaml").read_text())
    change(data)
    with pytest.raises(CampaignError, match=expected):
        parse_campaign(data, "cart_reminder.yaml")


def test_a_step_id_that_a_file_also_has_is_an_error(tmp_path: Path) -> None:
    src = PROJECT_ROOT / "campaigns" / "cart_reminder.yaml"
    (tmp_path / "cart_reminder.yaml").write_text(src.read_text())
    (tmp_path / "cart_reminder-offer.yaml").write_text(
        src.read_text().replace("id: cart_reminder\n", "id: cart_reminder-offer\n")
        .split("followups:")[0])  # fmt: skip
    with pytest.raises(CampaignError, match="'cart_reminder-offer' is used twice"):
        load_campaigns(tmp_path)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"kind": "trigger", "event": "Product Addded"}, "unknown event 'Product Addded'"),
        (
            {"kind": "trigger", "event": "Product Added", "exit_events": ["Order Done"]},
            "unknown event 'Order Done'",
        ),
        (
            {"kind": "trigger", "trigger": "abandoned_cart", "event": "Product Added"},
            "needs 'event' or a built-in 'trigger'",
        ),
        ({"kind": "recurring", "cron": "0 6 * * 4", "wait_minutes": 30}, "need an 'event'"),
        (
            {
                "kind": "trigger",
                "event": "Product Added",
                "where": [{"property": "price", "op": "gte", "value": "20"}],
            },
            "'gte' needs a number",
        ),
        (
            {
                "kind": "trigger",
                "event": "Product Added",
                "where": [{"property": "price; drop table x", "op": "eq", "value": 1}],
            },
            "where.0.property",
        ),
    ],
)
def test_a_journey_schedule_gets_one_clear_error_per_mistake(
    schedule: dict[str, Any], expected: str
) -> None:
    import yaml

    data = yaml.safe_load((PROJECT_ROOT / "campaigns" / "cart_reminder.yaml").read_text())
    data["schedule"] = schedule
    with pytest.raises(CampaignError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_campaign(data, "cart_reminder.yaml")


def test_the_built_in_abandoned_cart_rule_is_an_alias_of_the_cart_journey(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    import yaml

    from notify.journeys import is_journey

    data = yaml.safe_load((PROJECT_ROOT / "campaigns" / "cart_reminder.yaml").read_text())
    data.update(channels=["push"], followups=[])
    data["schedule"] = {"kind": "trigger", "trigger": "abandoned_cart", "after_hours": 2}
    old = parse_campaign(data, "cart_reminder.yaml")
    s = old.schedule
    assert is_journey(old) and s.trigger is None
    assert (s.event, s.exit_events, s.wait_minutes) == ("Product Added", ["Order Completed"], 120)
    # and it runs as one: a cart two hours and a minute ago, reminded now
    (a, _), (b, _) = reachable(shop, n=2)
    step(shop, [old], T0, settings)
    load(shop, settings, tmp_path, [cart(T0 - timedelta(minutes=121), a),
                                    cart(T0 - timedelta(minutes=121), b),
                                    order(T0 - timedelta(minutes=60), b)])  # fmt: skip
    report = step(shop, [old], T0, settings)
    assert report.journeys["cart_reminder"]["planned planned"] == 1, report
    assert report.journeys["cart_reminder"]["exited on Order Completed"] == 1, report
    assert [d[0] for d in deliveries(shop)] == [a]


def test_through_the_collector_a_restarted_journeys_process_sends_each_reminder_once(
    shop: str, tmp_path: Path, fake: FakeFcm
) -> None:
    """The shop's tracker (segment-analytics-python) posts to ``crm collect``; ``crm journeys
    run`` is killed after the carts entered and started again: each abandoned cart gets one
    reminder, through the firebase-admin SDK; the ordered one none, nor the one whose order
    (made during the wait) arrived after its cart had entered."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from segment.analytics import Client

    from tests.test_collect import Collector, _crm, _free_port

    home = tmp_path / "home"
    env = {**os.environ, "CRM_DATABASE_URL": shop, "CRM_HOME": str(home),
           "CRM_COLLECT_FLUSH_SECONDS": "0.2", "CRM_FCM_ENDPOINT": fake.endpoint,
           "CRM_FCM_CA_FILE": str(fake.ca_file), "CRM_QUIET_HOURS": "[0, 0]",
           "CRM_PUSH_CAP_PER_DAY": "10"}  # fmt: skip
    key = _crm(env, "sources", "add", "app").strip().splitlines()[-1]
    collector = Collector(env, _free_port(), key, shop)
    collector.start()
    folder = tmp_path / "campaigns"
    folder.mkdir()
    data = yaml.safe_load((PROJECT_ROOT / "campaigns" / "cart_reminder.yaml").read_text())
    data.update(channels=["push"], followups=[])
    data["schedule"]["wait_minutes"] = 1
    (folder / "cart_reminder.yaml").write_text(yaml.safe_dump(data))
    log = (tmp_path / "journeys.log").open("ab")

    def journeys() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "journeys", "run", "--interval", "0.5",
             "--folder", str(folder), "--heartbeat", str(tmp_path / "beat")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def count(query: str) -> int:
        with psycopg.connect(shop) as conn:
            return int(conn.execute(query).fetchone()[0])  # type: ignore[index]

    def until(what: Callable[[], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not what():
            assert time.monotonic() < deadline, (tmp_path / "journeys.log").read_text()
            time.sleep(0.2)

    proc = journeys()
    try:
        until(lambda: count("select count(*) from crm.journeys") == 1)
        (a, _), (b, _), (late, _) = reachable(shop, n=3)
        [(h, _)] = reachable(shop, held_out=True, n=1)
        reach = {c for c, _ in reachable(shop, n=200)} - {a, b, late}
        with psycopg.connect(shop) as conn:
            [(device, customer)] = conn.execute(
                "select identifier, customer_id from intermediate.int_identities_stitched"
                " where identifier <> customer_id and customer_id = any(%s) limit 1",
                (sorted(reach),),
            ).fetchall()
        # carts 45 s ago: due 15 s from now (judged by the events' own time)
        at = datetime.now(UTC) - timedelta(seconds=45)
        client = Client(key, host=collector.base, sync_mode=True)
        product = {"product_id": "p00101", "name": "Blue scarf", "price": 35.0,
                   "currency": "USD", "quantity": 1}  # fmt: skip
        for who in (a, b, h, late):
            client.track(user_id=who, event="Product Added", properties=product, timestamp=at)
        client.track(anonymous_id=device, event="Product Added", properties=product,
                     timestamp=at)  # fmt: skip
        paid = {"order_id": "o-collect-1", "total": 35.0, "currency": "USD",
                "products": [{"product_id": "p00101", "price": 35.0}]}  # fmt: skip
        client.track(user_id=b, event="Order Completed", properties=paid,
                     timestamp=at + timedelta(seconds=5))  # fmt: skip
        client.flush()
        entered = "select count(*) from crm.journey_entries where campaign_id = 'cart_reminder'"
        until(lambda: count(entered) == 5)
        # an order made 10 s after the cart, from a phone that was offline: it arrives now
        client.track(user_id=late, event="Order Completed", timestamp=at + timedelta(seconds=10),
                     properties={**paid, "order_id": "o-collect-late"})  # fmt: skip
        client.flush()
        exited = ("select count(*) from crm.journey_entries where campaign_id = 'cart_reminder'"
                  " and state = 'exited'")  # fmt: skip
        until(lambda: count(exited) == 2)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-wait: nothing planned yet
        proc.wait(30)
        assert count("select count(*) from crm.deliveries") == 0
        proc = journeys()
        until(lambda: len(fake.sent) >= 2)
        assert time.time() - (tmp_path / "beat").stat().st_mtime < 10  # compose's health check
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)  # and once more after sending
        proc.wait(30)
        proc = journeys()
        time.sleep(3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        collector.kill()
    with psycopg.connect(shop) as conn:
        got: dict[str, str] = dict(conn.execute(
            "select customer_id, state from crm.deliveries where campaign_id = 'cart_reminder'"
        ).fetchall())  # fmt: skip
    assert got == {a: "sent", customer: "sent", h: "held_out"}
    assert len(fake.sent) == 2
    assert all("Blue scarf is still in your cart" in json.dumps(m) for m in fake.sent)
