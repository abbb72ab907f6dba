"""Deliveries per second from one worker to the local fake FCM, which runs in its own process
(as FCM does: the fake must not share the worker's CPU or GIL). Figures are ratios against a
baseline measured in the same run:

1. plain async HTTP (httpx, same payloads, same concurrency) to the fake: the transport's ceiling;
2. the firebase-admin SDK alone (``FcmSender.send``): the SDK's cost per message on top;
3. the whole path, ``send_due``: claim in PostgreSQL, consent and token re-check, frequency caps
   in Redis, SDK send, outcomes recorded; over a synthetic shop of ``--customers``.

    python bench/deliver_bench.py [--messages 20000] [--customers 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dbt_bench import fresh_db

from crm import db
from crm.settings import Settings
from notify.fcm import MAX_BATCH, FcmSender, Push, build

SHOP = """
create schema if not exists marts;
create schema if not exists pii;
create table marts.dim_customers (customer_id text primary key, lifecycle_segment text,
    locale text, time_zone text, push_consent boolean, email_consent boolean, is_known boolean);
create table marts.customer_features (customer_id text primary key, top_category text);
create table marts.push_devices (customer_id text, device_id text, push_token text,
    platform text, is_valid boolean, token_seen_at timestamptz);
create index on marts.push_devices (customer_id);
create table marts.dim_products (product_id text primary key, product_name text);
create table pii.customer_pii (customer_id text primary key, email text);
insert into marts.dim_customers
    select 'c' || i, 'active', (array['en-GB', 'de-DE', 'fr-FR'])[1 + i % 3],
           (array['Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[1 + i % 3],
           true, false, true
    from generate_series(1, %(n)s) i;
insert into marts.customer_features select 'c' || i, 'shoes' from generate_series(1, %(n)s) i;
insert into marts.push_devices
    select 'c' || i, 'd' || i, 'tok-' || i, (array['android', 'ios', 'web'])[1 + i % 3], true,
           now()
    from generate_series(1, %(n)s) i;
"""


def fake_process(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "notify.fake_fcm", "--port", str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "fake FCM at ..." once it listens
    return proc


async def raw_httpx(endpoint: str, pushes: list[Push]) -> None:
    from firebase_admin import messaging

    url = f"{endpoint}/v1/projects/bench/messages:send"
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
        for start in range(0, len(pushes), MAX_BATCH):
            chunk = pushes[start : start + MAX_BATCH]
            bodies = [
                {"message": messaging._MessagingService.encode_message(build(p))} for p in chunk
            ]
            await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def end_to_end(endpoint: str, customers: int) -> tuple[int, float, float]:
    """(deliveries sent, seconds to plan, seconds to send) over a synthetic shop."""
    from ml.publish import redis_client
    from notify.campaigns import parse_campaign
    from notify.deliver import plan, send_due

    url = fresh_db(db.database_url(), "bench_deliver")
    db.upgrade(url)
    with psycopg.connect(url) as conn:
        conn.execute(SHOP.replace("%(n)s", str(int(customers))))
        conn.commit()
    home = Path(tempfile.mkdtemp(prefix="bench-deliver-"))
    settings = Settings(_env_file=None, database_url=url, home=home,  # type: ignore[call-arg]
                        push_cap_per_day=100, push_cap_per_week=100)  # fmt: skip
    campaign = parse_campaign({
        "id": "bench", "name": "Bench", "audience": {"lifecycle": ["active"]},
        "messages": [{"title": "Hello", "body": "New in {{ top_category }}"}],
        "channels": ["push"], "schedule": {"kind": "once", "at": "2026-03-01T00:00:00+00:00"},
        "send_time": {"mode": "fixed", "hour": 10}, "holdout_percent": 10,
        "end_date": str(date(2099, 1, 1)),
    })  # fmt: skip
    now = datetime(2026, 3, 1, 1, tzinfo=UTC)
    t = time.perf_counter()
    with psycopg.connect(url) as conn:
        plan(conn, campaign, now, settings)
        conn.commit()
    planned = time.perf_counter() - t
    sender = FcmSender("bench", endpoint=endpoint, name="bench-e2e")
    t = time.perf_counter()
    totals = send_due(url, sender, redis_client(settings), now=now + timedelta(days=2),
                      settings=settings)  # fmt: skip
    sending = time.perf_counter() - t
    sender.close()
    assert set(totals) == {"sent"}, totals
    return totals["sent"], planned, sending


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_FCM_PORT", 18765)))
    args = ap.parse_args()
    pushes = [Push(str(i), f"tok-{i}", ("android", "ios", "web")[i % 3], "Hello", "World")
              for i in range(args.messages)]  # fmt: skip
    proc = fake_process(args.port)
    endpoint = f"http://127.0.0.1:{args.port}"
    try:
        t = time.perf_counter()
        asyncio.run(raw_httpx(endpoint, pushes))
        raw = args.messages / (time.perf_counter() - t)
        sender = FcmSender("bench", endpoint=endpoint, name="bench")
        t = time.perf_counter()
        results = sender.send(pushes)
        sdk = args.messages / (time.perf_counter() - t)
        sender.close()
        assert all(r.outcome == "sent" for r in results)
        sent, planned, sending = end_to_end(endpoint, args.customers)
    finally:
        proc.terminate()
        proc.wait(10)
    e2e = sent / sending
    print(f"fake FCM in its own process; {args.messages:,} messages")
    print(f"  plain httpx:        {raw:,.0f}/s")
    print(f"  firebase-admin SDK: {sdk:,.0f}/s = {sdk / raw:.2f} of plain HTTP")
    print(f"  send_due end to end ({sent:,} deliveries): {e2e:,.0f}/s = {e2e / sdk:.2f} of the "
          f"SDK alone; planning {args.customers / planned:,.0f} members/s")  # fmt: skip
    print("  target: 2,000 deliveries/s")


if __name__ == "__main__":
    main()
