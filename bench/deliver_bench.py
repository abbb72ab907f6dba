"""Deliveries per second from one worker to the local fake FCM, which runs in its own process
(as FCM does: the fake must not share the worker's CPU or GIL). The fake speaks what FCM
speaks, HTTP/2 over TLS; the same fake over plain HTTP/1.1 is measured too (the old fake's
protocol). Figures are ratios against a baseline measured in the same run:

1. plain async HTTP (httpx, same payloads, same concurrency) to the fake: the transport's ceiling;
2. the firebase-admin SDK alone (``FcmSender.send``), over HTTP/1.1 and over HTTP/2;
3. the whole path, ``send_now``: claim in PostgreSQL, consent and token re-check, frequency caps
   in Redis, SDK send, outcomes recorded; over a synthetic shop of ``--customers``; with one
   sender process and with ``--processes`` (CRM_SEND_PROCESSES).

    python bench/deliver_bench.py [--messages 20000] [--customers 20000] [--processes 2]
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
from crm.transform import run_dbt
from notify.fcm import MAX_BATCH, FcmSender, Push, build

# the marts sending reads, built by the dbt project itself (so with its keys and indexes) on
# empty event tables, then filled with a synthetic shop
SENDING_MARTS = "+dim_customers +customer_features +push_devices +dim_products +customer_pii"
SHOP = """
insert into marts.dim_customers (customer_id, is_known, lifecycle_segment, locale, time_zone,
                                 push_consent, email_consent)
    select 'c' || i, true, 'active', (array['en-GB', 'de-DE', 'fr-FR'])[1 + i % 3],
           (array['Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[1 + i % 3], true, false
    from generate_series(1, %(n)s) i;
insert into marts.customer_features (customer_id, top_category)
    select 'c' || i, 'shoes' from generate_series(1, %(n)s) i;
insert into marts.push_devices (device_id, customer_id, push_token, platform, is_valid,
                                token_seen_at)
    select 'd' || i, 'c' || i, 'tok-' || i, (array['android', 'ios', 'web'])[1 + i % 3], true,
           now()
    from generate_series(1, %(n)s) i;
analyze marts.dim_customers, marts.customer_features, marts.push_devices;
"""


def fake_process(port: int, tls: bool = True) -> tuple[subprocess.Popen[bytes], str, str | None]:
    """(process, endpoint, CA file) of a fake FCM serving in its own process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "notify.fake_fcm", "--port", str(port),
         *([] if tls else ["--no-tls"])],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()  # "fake FCM at URL ca_file=PATH" once it listens
    endpoint, ca = line.split(" at ", 1)[1].split(" ca_file=")
    return proc, endpoint, ca.strip() or None


async def raw_httpx(endpoint: str, ca_file: str | None, pushes: list[Push]) -> None:
    from firebase_admin import messaging

    url = f"{endpoint}/v1/projects/bench/messages:send"
    async with httpx.AsyncClient(http2=True, verify=ca_file or True,
                                 limits=httpx.Limits(max_connections=100)) as client:  # fmt: skip
        for start in range(0, len(pushes), MAX_BATCH):
            chunk = pushes[start : start + MAX_BATCH]
            bodies = [
                {"message": messaging._MessagingService.encode_message(build(p))} for p in chunk
            ]
            await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def end_to_end(
    endpoint: str, ca_file: str | None, customers: int, processes: int
) -> tuple[int, float, float]:
    """(deliveries sent, seconds to plan, seconds to send) over a synthetic shop."""
    from notify import run
    from notify.campaigns import parse_campaign
    from notify.deliver import plan

    url = fresh_db(db.database_url(), "bench_deliver")
    db.upgrade(url)
    run_dbt(["run", "--select", SENDING_MARTS], url=url, capture=True)
    with psycopg.connect(url) as conn:
        conn.execute(SHOP.replace("%(n)s", str(int(customers))))
        conn.commit()
    home = Path(tempfile.mkdtemp(prefix="bench-deliver-"))
    settings = Settings(_env_file=None, database_url=url, home=home,  # type: ignore[call-arg]
                        push_cap_per_day=100, push_cap_per_week=100, fcm_project_id="bench",
                        fcm_endpoint=endpoint, fcm_ca_file=ca_file,
                        send_processes=processes)  # fmt: skip
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
    t = time.perf_counter()
    totals = run.send_now(url, settings, now=now + timedelta(days=2))
    sending = time.perf_counter() - t
    assert set(totals) == {"sent"}, totals
    return totals["sent"], planned, sending


def sdk_alone(
    endpoint: str, ca_file: str | None, pushes: list[Push], name: str, fake_pid: int
) -> tuple[float, float, float]:
    """(messages/s, client CPU ms per message, fake's CPU ms per message)."""
    import psutil

    fake = psutil.Process(fake_pid)
    sender = FcmSender("bench", endpoint=endpoint, name=name, ca_file=ca_file)
    sender.send(pushes[:100])  # connection and TLS set up
    t, cpu, fake_cpu = time.perf_counter(), time.process_time(), sum(fake.cpu_times()[:2])
    results = sender.send(pushes)
    rate = len(pushes) / (time.perf_counter() - t)
    per = 1000 / len(pushes)
    client_ms = (time.process_time() - cpu) * per
    fake_ms = (sum(fake.cpu_times()[:2]) - fake_cpu) * per
    sender.close()
    assert all(r.outcome == "sent" for r in results)
    return rate, client_ms, fake_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_FCM_PORT", 18765)))
    args = ap.parse_args()
    pushes = [Push(str(i), f"tok-{i}", ("android", "ios", "web")[i % 3], "Hello", "World")
              for i in range(args.messages)]  # fmt: skip
    proc, endpoint, _ = fake_process(args.port + 1, tls=False)
    try:
        h1, _, _ = sdk_alone(endpoint, None, pushes, "bench-h1", proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    proc, endpoint, ca = fake_process(args.port)
    try:
        t = time.perf_counter()
        asyncio.run(raw_httpx(endpoint, ca, pushes))
        raw = args.messages / (time.perf_counter() - t)
        sdk, client_ms, fake_ms = sdk_alone(endpoint, ca, pushes, "bench-h2", proc.pid)
        sent, planned, sending = end_to_end(endpoint, ca, args.customers, 1)
        sent_n, _, sending_n = end_to_end(endpoint, ca, args.customers, args.processes)
    finally:
        proc.terminate()
        proc.wait(10)
    e2e, e2e_n = sent / sending, sent_n / sending_n
    print(f"fake FCM in its own process; {args.messages:,} messages; {os.cpu_count()} cores")
    print(f"  plain httpx, HTTP/2 + TLS:          {raw:,.0f}/s")
    print(f"  firebase-admin SDK, HTTP/2 + TLS:   {sdk:,.0f}/s = {sdk / raw:.2f} of plain HTTP")
    print(f"  firebase-admin SDK, HTTP/1.1 plain: {h1:,.0f}/s = {h1 / sdk:.2f} of HTTP/2")
    print(f"    CPU per message over HTTP/2: sender {client_ms:.2f} ms, fake FCM {fake_ms:.2f} ms"
          f" (both on this machine's cores: at most {2000 / (client_ms + fake_ms):,.0f}/s"
          " on two)")  # fmt: skip
    print(f"  send_now, 1 process ({sent:,} deliveries): {e2e:,.0f}/s = {e2e / sdk:.2f} of the "
          f"SDK alone; planning {args.customers / planned:,.0f} members/s")  # fmt: skip
    print(f"  send_now, {args.processes} processes: {e2e_n:,.0f}/s = {e2e_n / e2e:.2f} x one "
          "process")  # fmt: skip
    print(f"  target: 2,000 deliveries/s: {'met' if max(e2e, e2e_n) >= 2000 else 'NOT met'}")


if __name__ == "__main__":
    main()
