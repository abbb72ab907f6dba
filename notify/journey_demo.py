"""``make demo``'s journey step: carts sent through the collector, the abandoned-cart journey.

    python -m notify.journey_demo --at ISO [--customers 12]

At the shop's time ``--at``, the shop's tracker (``segment-analytics-python``) sends a
``Product Added`` for each of ``--customers`` known customers with a push device through
``crm collect``, and an ``Order Completed`` 20 minutes later for every third of them. The
``cart_reminder`` journey (and its ``offer`` step) then steps as the shop's clock moves on: 5
minutes (the carts enter), 61 minutes (the first reminders are due) and a day (the offers),
sending what is due through the firebase-admin SDK to a local fake FCM after each step. It
prints each step's counts and every delivery: who, which step, when, what. The calls have
fixed messageIds, so running it again enters nobody twice and sends nothing twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
from rich.console import Console
from rich.table import Table

from crm import db
from crm.collect.demo import running_collector
from crm.settings import get_settings
from notify.fake_fcm import FakeFcm
from notify.journeys import step, steps_of
from notify.run import CAMPAIGNS, select_campaigns, send_now

JOURNEY = "cart_reminder"
CUSTOMERS = """
    select c.customer_id, p.product_id, p.product_name, p.price
    from marts.dim_customers c
    join lateral (select product_id, product_name, price from marts.dim_products
                  where price >= 20 order by md5(c.customer_id || product_id) limit 1) p on true
    where c.is_known and c.push_consent
      and exists (select 1 from marts.push_devices d
                  where d.customer_id = c.customer_id and d.is_valid)
    order by md5(c.customer_id) limit %s
"""


def main() -> None:
    from segment.analytics import Client

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", type=datetime.fromisoformat, required=True)
    parser.add_argument("--customers", type=int, default=12)
    args = parser.parse_args()
    at: datetime = args.at if args.at.tzinfo else args.at.replace(tzinfo=UTC)
    out = Console(width=140)
    settings = get_settings()
    url = db.database_url(settings)
    db.upgrade(url)
    campaigns = select_campaigns(CAMPAIGNS)
    ids = steps_of(campaigns, JOURNEY)
    journey = [c for c in campaigns if c.id in ids]
    step(url, journey, at, settings)  # the journey starts (once): it reads loads from now on
    with psycopg.connect(url) as conn:
        rows = conn.execute(CUSTOMERS, (args.customers,)).fetchall()
    if not rows:
        sys.exit("no known customer with a push device: build the customer tables first")
    calls = []
    for i, (customer, product, name, price) in enumerate(rows):
        item = {"product_id": product, "name": name, "price": float(price), "currency": "USD",
                "quantity": 1}  # fmt: skip
        calls.append((customer, "Product Added", item, at, f"demo-cart-{customer}-{at:%Y%m%d%H%M}"))
        if i % 3 == 2:
            line = {"product_id": product, "price": float(price), "quantity": 1}
            paid = {"order_id": f"demo-{customer}-{at:%Y%m%d%H%M}", "total": float(price),
                    "revenue": float(price), "currency": "USD", "products": [line]}  # fmt: skip
            calls.append((customer, "Order Completed", paid, at + timedelta(minutes=20),
                          f"demo-order-{customer}-{at:%Y%m%d%H%M}"))  # fmt: skip
    with running_collector(url) as (base, key):
        errors: list[object] = []
        client = Client(key, host=base, on_error=lambda e, _: errors.append(e))
        for customer, event, props, when, message_id in calls:
            client.track(customer, event, props, timestamp=when, message_id=message_id)
        client.flush()
        wanted = [m for *_, m in calls]
        deadline = time.monotonic() + 60
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "select count(*) from raw.message_ids where message_id = any(%s)", (wanted,)
                ).fetchone()
                if row and row[0] >= len(wanted):
                    break
                time.sleep(0.2)
        client.join()
        if errors:
            sys.exit(f"the tracker's calls failed: {errors[0]}")
    orders = sum(1 for c in calls if c[1] == "Order Completed")
    print(f"{len(rows)} carts sent through the collector at {at:%Y-%m-%d %H:%M} UTC (shop time),"
          f" {orders} of them ordered 20 minutes later")  # fmt: skip
    with FakeFcm() as fake:
        fcm = settings.model_copy(update={"fcm_endpoint": fake.endpoint,
                                          "fcm_ca_file": fake.ca_file})  # fmt: skip
        for later in (timedelta(minutes=5), timedelta(minutes=61), timedelta(days=1, minutes=1)):
            now = at + later
            report = step(url, journey, now, fcm)
            sent = send_now(url, fcm, now)
            for cid, counts in report.journeys.items():
                shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
                shown = shown or "nothing new"
                print(f"  {now:%Y-%m-%d %H:%M} {cid}: {shown}")
            if sent:
                print(f"  {now:%Y-%m-%d %H:%M} sent: " + ", ".join(
                    f"{v} {k}" for k, v in sorted(sent.items())))  # fmt: skip
        pushes = len(fake.sent)
    table = Table("customer", "step", "state", "slot (UTC)", "title", title="deliveries")
    with psycopg.connect(url) as conn:
        for cid, customer, state, slot, title in conn.execute(
            "select d.campaign_id, d.customer_id, d.state, d.slot, d.title"
            " from crm.deliveries d join crm.journey_entries e"
            "   on e.campaign_id = d.campaign_id and e.occurrence = d.occurrence"
            "  and e.customer_id = d.customer_id"
            " where d.campaign_id = any(%s) and e.trigger_message_id = any(%s)"
            " order by d.slot, d.customer_id",
            (ids, wanted),
        ):
            table.add_row(customer, cid, state, f"{slot:%Y-%m-%d %H:%M}", title)
    out.print(table)
    print(f"{pushes} pushes accepted by the fake FCM in this run")


if __name__ == "__main__":
    main()
