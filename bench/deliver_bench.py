"""Deliveries per second against a fake FCM that costs (almost) nothing: Debian's nginx, in its
own process, serving FCM's success body over HTTP/2 + TLS (``apt-get install nginx``; the
pure-Python fake in ``notify.fake_fcm`` stays the tests' fake, with FCM's error behaviour).
Figures are ratios against a baseline measured in the same run:

1. the transport alone (``FcmSender.send``, ``--messages`` messages): the firebase-admin SDK's
   own client (the baseline) and the SDK's requests over libcurl (``notify.fcm_curl``), each
   with the CPU it costs the sender and nginx per message;
2. the whole path, ``send_now``: claim in PostgreSQL, consent and token re-check, frequency
   caps in Redis, encode, send, outcomes recorded; over a synthetic shop of ``--customers``;
   with one sender process and with two, with each transport; the CPU each part of the
   machine spent (senders, PostgreSQL, Redis, nginx) per delivery;
3. where one sender process spends its time (cProfile of a one-process run, by step).

    python bench/deliver_bench.py [--messages 20000] [--customers 50000]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dbt_bench import fresh_db

from crm import db
from crm.settings import Settings
from crm.transform import run_dbt
from notify.fake_fcm import self_signed
from notify.fcm import FcmSender, Push

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
NGINX_CONF = """
worker_processes 1;
error_log {folder}/error.log;
pid {folder}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 1000;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location ~ ^/v1/projects/[^/]+/messages:send$ {{
            default_type "application/json; charset=UTF-8";
            return 200 '{{"name": "projects/bench/messages/0"}}';
        }}
    }}
}}
"""
STEPS = {  # cProfile functions -> the step of a delivery they are
    "claim (PostgreSQL)": ["send_due"],
    "consent and token re-check (PostgreSQL)": [],
    "caps (Redis)": ["take_many"],
    "encode (firebase-admin)": ["body", "build"],
    "send (transport)": ["exchange", "send_async"],
    "map replies (firebase-admin errors)": ["_response", "classify"],
    "record outcomes (PostgreSQL)": ["record"],
}


class Nginx:
    """nginx in its own process (one worker), serving FCM's success body over HTTP/2 + TLS."""

    def __init__(self) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise SystemExit("the delivery benchmark needs nginx: apt-get install nginx")
        self.folder = Path(tempfile.mkdtemp(prefix="bench-fcm-nginx-"))
        cert, key = self_signed(self.folder)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = self.folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=self.folder, port=self.port, cert=cert, key=key))
        self.proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(self.folder),
                                      "-g", "daemon off;"])  # fmt: skip
        self.endpoint, self.ca_file = f"https://127.0.0.1:{self.port}", str(cert)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)

    def cpu(self) -> float:
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _cpu_of(names: tuple[str, ...]) -> float:
    """CPU seconds of the running processes so named, with their reaped children's (a
    PostgreSQL backend that exited is counted in its postmaster's children times)."""
    total = 0.0
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] and p.info["name"].startswith(names):
                total += sum(p.cpu_times()[:4])
        except psutil.Error:
            pass
    return total


def _own_cpu() -> float:
    """This process's CPU and its finished children's (the sender processes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def transport_alone(fake: Nginx, pushes: list[Push], transport: str) -> dict[str, float]:
    sender = FcmSender("bench", endpoint=fake.endpoint, name=f"alone-{transport}",
                       ca_file=fake.ca_file, transport=transport)  # type: ignore[arg-type]  # fmt: skip
    sender.send(pushes[:200])  # connection and TLS set up
    t, cpu, fake_cpu = time.perf_counter(), time.process_time(), fake.cpu()
    results = sender.send(pushes)
    seconds = time.perf_counter() - t
    per = 1000 / len(pushes)
    out = {"rate": len(pushes) / seconds, "sender_ms": (time.process_time() - cpu) * per,
           "fake_ms": (fake.cpu() - fake_cpu) * per}  # fmt: skip
    sender.close()
    assert all(r.outcome == "sent" for r in results), {r.outcome for r in results}
    return out


def _shop(customers: int) -> str:
    url = fresh_db(db.database_url(), "bench_deliver")
    db.upgrade(url)
    run_dbt(["run", "--select", SENDING_MARTS], url=url, capture=True)
    with psycopg.connect(url) as conn:
        conn.execute(SHOP.replace("%(n)s", str(int(customers))))
    return url


def end_to_end(url: str, fake: Nginx, processes: int, transport: str,
               profile: bool = False) -> dict[str, Any]:  # fmt: skip
    """Plan a campaign to every customer of the shop at ``url`` (a new one each run), then
    send it all; deliveries/s and CPU ms per delivery of each part of the machine."""
    from notify import run
    from notify.campaigns import parse_campaign
    from notify.deliver import plan

    home = Path(tempfile.mkdtemp(prefix="bench-deliver-"))
    settings = Settings(_env_file=None, database_url=url, home=home,  # type: ignore[call-arg]
                        push_cap_per_day=100, push_cap_per_week=100, fcm_project_id="bench",
                        fcm_endpoint=fake.endpoint, fcm_ca_file=fake.ca_file,
                        fcm_transport=transport, send_processes=processes)  # fmt: skip
    run_id = f"bench-{transport}-{processes}-{int(time.time() * 1000)}"
    campaign = parse_campaign({
        "id": run_id, "name": "Bench", "audience": {"lifecycle": ["active"]},
        "messages": [{"title": "Hello", "body": "New in {{ top_category }}"}],
        "channels": ["push"], "schedule": {"kind": "once", "at": "2026-03-01T00:00:00+00:00"},
        "send_time": {"mode": "fixed", "hour": 10}, "holdout_percent": 10,
        "end_date": str(date(2099, 1, 1)),
    })  # fmt: skip
    now = datetime(2026, 3, 1, 1, tzinfo=UTC)
    with psycopg.connect(url) as conn:
        plan(conn, campaign, now, settings)
        conn.execute("update crm.deliveries set state = 'sent' where campaign_id <> %s"
                     " and state = 'planned'", (run_id,))  # fmt: skip
    from ml.publish import redis_client

    redis_client(settings).flushdb()  # the caps start empty each run
    before = {"sender": _own_cpu(), "postgres": _cpu_of(("postgres",)),
              "redis": _cpu_of(("redis",)), "nginx": fake.cpu()}  # fmt: skip
    prof = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    totals = run.send_now(url, settings, now=now + timedelta(days=2))
    if prof:
        prof.disable()
    seconds = time.perf_counter() - t
    after = {"sender": _own_cpu(), "postgres": _cpu_of(("postgres",)),
             "redis": _cpu_of(("redis",)), "nginx": fake.cpu()}  # fmt: skip
    assert set(totals) == {"sent"}, totals
    sent = totals["sent"]
    out: dict[str, Any] = {
        "sent": sent,
        "seconds": seconds,
        "rate": sent / seconds,
        "cpu_ms": {k: (after[k] - before[k]) * 1000 / sent for k in after},
    }
    if prof:
        out["steps"] = _steps(prof, sent)
    shutil.rmtree(home, ignore_errors=True)
    return out


def _steps(prof: cProfile.Profile, sent: int) -> dict[str, float]:
    """Milliseconds per delivery of each step, from the profile's cumulative times."""
    stats = pstats.Stats(prof)
    cumulative: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "notify" in file or "fcm" in file:
            cumulative[func] = cumulative.get(func, 0.0) + ct
    total = cumulative.get("send_due", 0.0)
    steps = {}
    inner = 0.0
    for step, funcs in STEPS.items():
        if step.startswith("claim"):
            continue
        ms = sum(cumulative.get(f, 0.0) for f in funcs) * 1000 / sent
        steps[step] = ms
        inner += ms
    info = cumulative.get("_send_claimed", 0.0) * 1000 / sent
    steps["consent and token re-check (PostgreSQL)"] = max(
        0.0, info - sum(v for k, v in steps.items() if k != "record outcomes (PostgreSQL)")
    )
    steps["claim (PostgreSQL)"] = max(0.0, total * 1000 / sent - info - steps[
        "record outcomes (PostgreSQL)"])  # fmt: skip
    steps["whole sender (profiled)"] = total * 1000 / sent
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--customers", type=int, default=50_000)
    args = ap.parse_args()
    pushes = [Push(str(i), f"tok-{i}", ("android", "ios", "web")[i % 3], "Hello", "World")
              for i in range(args.messages)]  # fmt: skip
    fake = Nginx()
    try:
        alone = {t: transport_alone(fake, pushes, t) for t in ("sdk", "curl")}
        url = _shop(args.customers)
        runs = {(t, n): end_to_end(url, fake, n, t) for t in ("sdk", "curl") for n in (1, 2)}
        profiled = end_to_end(url, fake, 1, "curl", profile=True)
    finally:
        fake.close()
    cores = os.cpu_count()
    print(f"nginx {fake.endpoint} (HTTP/2 + TLS, one worker); {args.messages:,} messages; "
          f"{cores} cores; {datetime.now(UTC):%Y-%m-%d}")  # fmt: skip
    sdk = alone["sdk"]
    for t, r in alone.items():
        print(f"  transport alone, {t:>4}: {r['rate']:>7,.0f}/s = {r['rate'] / sdk['rate']:5.2f}x "
              f"the SDK's; sender CPU {r['sender_ms']:.3f} ms/message, nginx "
              f"{r['fake_ms']:.3f} ms")  # fmt: skip
    base = runs[("sdk", 1)]["rate"]
    for (t, n), r in runs.items():
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms"].items())
        print(f"  send_now, {t:>4}, {n} process(es): {r['rate']:>7,.0f} deliveries/s "
              f"({r['sent']:,} in {r['seconds']:.1f} s) = {r['rate'] / base:5.2f}x the SDK's "
              f"one process; CPU ms/delivery: {cpu}")  # fmt: skip
    one, two = runs[("curl", 1)]["rate"], runs[("curl", 2)]["rate"]
    print(f"  curl, 2 processes / 1: {two / one:.2f}x (target >= 1.4)")
    print(f"  curl, 1 process: {one:,.0f}/s (target >= 5,000): "
          f"{'met' if one >= 5000 else 'NOT met'}")  # fmt: skip
    sender_ms = runs[("curl", 1)]["cpu_ms"]["sender"]
    print(f"  per core at {sender_ms:.3f} ms of sender CPU per delivery: {1000 / sender_ms:,.0f}"
          f"/s; FCM's default quota (10,000/s) needs {10_000 * sender_ms / 1000:.1f} sender "
          "cores")  # fmt: skip
    print(
        f"  one curl sender, profiled ({profiled['rate']:,.0f}/s under the profiler), "
        "ms per delivery:"
    )
    for step, ms in profiled["steps"].items():
        print(f"    {step}: {ms:.3f}")


if __name__ == "__main__":
    main()
