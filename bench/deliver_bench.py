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
NOW = datetime(2026, 3, 1, 1, tzinfo=UTC)
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


HOME = Path(tempfile.mkdtemp(prefix="bench-deliver-"))  # one embedded Redis for every run


def _settings(url: str, fake: Nginx, processes: int, transport: str) -> Settings:
    return Settings(_env_file=None, database_url=url, home=HOME,  # type: ignore[call-arg]
                    push_cap_per_day=100, push_cap_per_week=100, fcm_project_id="bench",
                    fcm_endpoint=fake.endpoint, fcm_ca_file=fake.ca_file,
                    fcm_transport=transport, send_processes=processes)  # fmt: skip


def _plan(url: str, settings: Settings, name: str, limit: int | None) -> None:
    """A campaign to every customer (``limit``: only that many deliveries left to send)."""
    from notify.campaigns import parse_campaign
    from notify.deliver import plan

    campaign = parse_campaign({
        "id": name, "name": "Bench", "audience": {"lifecycle": ["active"]},
        "messages": [{"title": "Hello", "body": "New in {{ top_category }}"}],
        "channels": ["push"], "schedule": {"kind": "once", "at": "2026-03-01T00:00:00+00:00"},
        "send_time": {"mode": "fixed", "hour": 10}, "holdout_percent": 10,
        "end_date": str(date(2099, 1, 1)),
    })  # fmt: skip
    with psycopg.connect(url) as conn:
        plan(conn, campaign, NOW, settings)
        conn.execute(
            "update crm.deliveries set state = 'sent' where state = 'planned' and"
            " (campaign_id <> %s or delivery_id > (select min(delivery_id) + %s from"
            " crm.deliveries where campaign_id = %s))",
            (name, limit if limit is not None else 1 << 62, name),
        )
    from ml.publish import redis_client

    redis_client(settings).flushdb()  # the caps start empty each run


def _machine(fake: Nginx) -> dict[str, float]:
    return {"sender": _own_cpu(), "postgres": _cpu_of(("postgres",)),
            "redis": _cpu_of(("redis",)), "nginx": fake.cpu()}  # fmt: skip


def end_to_end(url: str, fake: Nginx, processes: int, transport: str,
               limit: int | None = None, profile: bool = False) -> dict[str, Any]:  # fmt: skip
    """``send_now`` as the send task runs it, process start included: deliveries/s and CPU ms
    per delivery of each part of the machine."""
    from notify import run

    settings = _settings(url, fake, processes, transport)
    _plan(url, settings, f"now-{transport}-{processes}-{time.time_ns()}", limit)
    before = _machine(fake)
    prof = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    totals = run.send_now(url, settings, now=NOW + timedelta(days=2))
    if prof:
        prof.disable()
    seconds = time.perf_counter() - t
    after = _machine(fake)
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
    return out


def _ready_sender(url: str, settings: Settings, redis_at: str, index: int, barrier: Any,
                  results: Any) -> None:  # fmt: skip
    import redis

    from notify.deliver import send_due
    from notify.run import send_batch

    r = redis.Redis.from_url(redis_at)
    sender = FcmSender.from_settings(settings, name=f"bench-sender-{index}")
    sender.send([Push("warm-up", "tok-warm", "android", "Hello", "World")])  # TLS set up
    barrier.wait()
    cpu = time.process_time()
    totals = send_due(url, sender, r, now=NOW + timedelta(days=2), batch=send_batch(settings),
                      settings=settings)  # fmt: skip
    results.put((dict(totals), time.process_time() - cpu))
    sender.close()


def ready_senders(url: str, fake: Nginx, processes: int, transport: str,
                  limit: int | None = None) -> dict[str, Any]:  # fmt: skip
    """``processes`` sender processes, started and connected first, then released together:
    the sending rate without the processes' start (what a long campaign sees)."""
    import multiprocessing as mp

    from ml.publish import redis_client

    settings = _settings(url, fake, processes, transport)
    _plan(url, settings, f"ready-{transport}-{processes}-{time.time_ns()}", limit)
    redis_at = f"unix://{redis_client(settings).socket_file}"  # type: ignore[attr-defined]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_ready_sender, args=(url, settings, redis_at, i, barrier, results))
             for i in range(processes)]  # fmt: skip
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    before, t = _machine(fake), time.perf_counter()
    parts = [results.get(timeout=3600) for _ in procs]
    seconds = time.perf_counter() - t
    for p in procs:
        p.join(30)
    after = _machine(fake)
    sent = sum(totals.get("sent", 0) for totals, _cpu in parts)
    assert all(set(totals) <= {"sent"} for totals, _cpu in parts), parts
    cpu_ms = {k: (after[k] - before[k]) * 1000 / sent for k in after}
    cpu_ms["sender"] = sum(cpu for _totals, cpu in parts) * 1000 / sent  # sending only
    return {"sent": sent, "seconds": seconds, "rate": sent / seconds, "cpu_ms": cpu_ms}


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
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--sdk-deliveries", type=int, default=30_000,
                    help="deliveries the SDK's runs send (it is ~10x slower)")  # fmt: skip
    args = ap.parse_args()
    pushes = [Push(str(i), f"tok-{i}", ("android", "ios", "web")[i % 3], "Hello", "World")
              for i in range(args.messages)]  # fmt: skip
    fake = Nginx()
    try:
        alone = {t: transport_alone(fake, pushes, t) for t in ("sdk", "curl")}
        url = _shop(args.customers)
        ready = {}
        for t in ("sdk", "curl"):
            for n in (1, 2):
                ready[(t, n)] = ready_senders(
                    url, fake, n, t, args.sdk_deliveries if t == "sdk" else None
                )
        started = {n: end_to_end(url, fake, n, "curl") for n in (1, 2)}
        profiled = end_to_end(url, fake, 1, "curl", profile=True)
    finally:
        fake.close()
    cores = os.cpu_count()
    print(
        f"nginx {fake.endpoint} (HTTP/2 + TLS, one worker); {args.messages:,} messages; "
        f"{args.customers:,} customers; {cores} cores; {datetime.now(UTC):%Y-%m-%d}"
    )
    sdk = alone["sdk"]
    for t, r in alone.items():
        print(f"  transport alone, {t:>4}: {r['rate']:>7,.0f}/s = {r['rate'] / sdk['rate']:5.2f}x "
              f"the SDK's; sender CPU {r['sender_ms']:.3f} ms/message, nginx "
              f"{r['fake_ms']:.3f} ms")  # fmt: skip
    base = ready[("sdk", 1)]["rate"]
    print(
        "  end to end (claim, re-check, caps, encode, send, outcomes), senders started and "
        "connected first:"
    )
    for (t, n), r in ready.items():
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms"].items())
        print(f"    {t:>4}, {n} process(es): {r['rate']:>7,.0f} deliveries/s ({r['sent']:,} in "
              f"{r['seconds']:.1f} s) = {r['rate'] / base:5.2f}x the SDK's one process; CPU "
              f"ms/delivery: {cpu}")  # fmt: skip
    print("  send_now as the send task runs it (process start included):")
    for n, r in started.items():
        print(f"    curl, {n} process(es): {r['rate']:>7,.0f} deliveries/s ({r['sent']:,} in "
              f"{r['seconds']:.1f} s)")  # fmt: skip
    one, two = ready[("curl", 1)]["rate"], ready[("curl", 2)]["rate"]
    print(f"  curl, 2 processes / 1: {two / one:.2f}x (target >= 1.4): "
          f"{'met' if two / one >= 1.4 else 'NOT met'}")  # fmt: skip
    print(f"  curl, 1 process: {one:,.0f}/s (target >= 5,000): "
          f"{'met' if one >= 5000 else 'NOT met'}")  # fmt: skip
    per = ready[("curl", 1)]["cpu_ms"]
    sender_ms = per["sender"]
    print(f"  per sender core at {sender_ms:.3f} ms of sender CPU per delivery: "
          f"{1000 / sender_ms:,.0f}/s; FCM's default quota (10,000/s) needs "
          f"{10_000 * sender_ms / 1000:.1f} sender cores and "
          f"{10_000 * per['postgres'] / 1000:.1f} PostgreSQL cores")  # fmt: skip
    print(
        f"  one curl sender, profiled ({profiled['rate']:,.0f}/s under the profiler), "
        "ms per delivery:"
    )
    for step, ms in profiled["steps"].items():
        print(f"    {step}: {ms:.3f}")


if __name__ == "__main__":
    main()
