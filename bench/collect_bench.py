"""The collector against the file loader, on the same simulated events, in one run.

- files:     ``crm ingest`` of the events as one JSON Lines file (fresh database);
- streaming: the same events posted to ``crm collect``'s ``/v1/batch`` (100 calls a request,
  ``--clients`` concurrent keep-alive clients) until every one is in ``raw.events`` (fresh
  database): events/s end to end, and its ratio to the files' (target >= 0.7);
- steady:    ``--rate`` events/s (100-call requests at an even pace) for ``--steady-seconds``:
  acknowledgement latency p50 / p99 (target p99 <= 50 ms), freshness p50 / p95 (acknowledged
  to its load committed in ``raw.events``; target p95 <= 2 s), and the collector's resident
  memory (server and loader processes) each minute (target: flat).

    python bench/collect_bench.py [--events 200000] [--clients 4] [--rate 2000]
                                  [--steady-seconds 600]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_bench import dataset, fresh_db

from crm import db
from crm.collect import sources
from crm.ingest.load import ingest_paths
from crm.settings import Settings, get_settings

BATCH = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Collector:
    def __init__(self, url: str, home: Path) -> None:
        self.url, self.port = url, _free_port()
        self.key = sources.add(url, "bench", rate_limit=0)  # measure the pipeline, not a cap
        env = {**os.environ, "CRM_DATABASE_URL": url, "CRM_HOME": str(home),
               "CRM_COLLECT_SPOOL_DIR": str(home / "spool")}  # fmt: skip
        home.mkdir(parents=True, exist_ok=True)
        self.log = (home / "collect.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "collect", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=self.log, start_new_session=True,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        self.auth = "Basic " + base64.b64encode(f"{self.key}:".encode()).decode()
        for _ in range(300):
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the collector did not start")

    def settle(self, timeout: float = 60) -> None:
        """Wait until the collector's processes are idle: the loader process, its forkserver
        and parser start after /health answers, and their start-up is not throughput."""
        deadline = time.monotonic() + timeout
        before = sum(self.cpu_seconds().values())
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = sum(self.cpu_seconds().values())
            if now - before < 0.02 and len(self.cpu_seconds()) > 1:
                return
            before = now

    def rss_mb(self) -> float:
        root = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time of the collector's processes (server, loader, its parsers) by name."""
        root = psutil.Process(self.proc.pid)
        out: dict[str, float] = {}
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            name = "server" if p.pid == root.pid else p.name()
            out[name] = out.get(name, 0.0) + t.user + t.system
        return out

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)


def postgres_cpu() -> float:
    """CPU seconds used so far by the PostgreSQL server's processes: the live ones', and the
    postmaster's children that ended (a closed connection's backend)."""
    total = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "postgres":
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def quiesce(admin: str, *done: str, timeout: float = 300) -> None:
    """Vacuum and analyze the databases of the phases already measured (untimed), then wait
    until no autovacuum worker runs: otherwise autovacuum of the previous phase's fresh
    tables runs during the next phase, on its CPU and in its PostgreSQL figure."""
    for url in done:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("vacuum (analyze)")
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'"
            ).fetchone()
            if not row or not row[0]:
                return
            time.sleep(0.5)
    print(f"           (autovacuum still running after {timeout:.0f} s)")


def own_cpu() -> float:
    """CPU seconds of this process and its children (the file loader's parser processes)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def batches(path: Path, events: int) -> list[bytes]:
    calls = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                calls.append(orjson.loads(line))
            if len(calls) >= events:
                break
    return [orjson.dumps({"batch": calls[i : i + BATCH]}) for i in range(0, len(calls), BATCH)]


def wait_loaded(url: str, expected: int, timeout: float = 600) -> float:
    """When ``expected`` events are loaded. Watched on one connection through the loads'
    audit rows (a few rows), so the watching costs PostgreSQL next to nothing: counting the
    growing table on a new connection every 50 ms took about 1.5 s of its CPU in a run."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select coalesce(sum(loaded), 0) from raw.load_audit"
                " where status in ('loaded', 'partial')"
            ).fetchone()
            if row and int(row[0]) >= expected:
                return time.monotonic()
            time.sleep(0.05)
    raise SystemExit(f"not every call reached raw.events within {timeout:.0f} s")


def post_all(c: Collector, bodies: list[bytes], clients: int) -> None:
    """Post every body from ``clients`` threads, each on its own keep-alive connection, with
    the standard library's HTTP client: it shares the two cores with the collector, and costs
    about a third of httpx's CPU per request (0.4 s against 1.2 s for 1,915 requests)."""
    queue = list(reversed(bodies))
    lock = threading.Lock()
    failures: list[str] = []
    headers = {"Content-Type": "application/json", "Authorization": c.auth}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                conn.request("POST", "/v1/batch", body=body, headers=headers)
                r = conn.getresponse()
                text = r.read()
                if r.status != 200:
                    failures.append(text.decode())
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {failures[0]}")


def steady(c: Collector, bodies: list[bytes], rate: int, seconds: float) -> dict[str, object]:
    """One request of BATCH calls every BATCH / rate seconds; returns latencies and memory."""
    interval = BATCH / rate
    acks: list[tuple[bytes, float, float]] = []  # body, sent (epoch), acknowledged (epoch)
    memory: list[tuple[float, float]] = []
    start = time.monotonic()
    n = 0
    with httpx.Client(auth=(c.key, ""), timeout=30) as client:
        while time.monotonic() - start < seconds:
            due = start + n * interval
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            body = bodies[n % len(bodies)]
            if n >= len(bodies):  # another round of the same calls, as new ones
                body = body.replace(b'"messageId":"', b'"messageId":"r%d-' % (n // len(bodies)))
            sent = time.time()
            r = client.post(f"{c.base}/v1/batch", content=body,
                            headers={"Content-Type": "application/json"})  # fmt: skip
            if r.status_code != 200:
                raise SystemExit(f"steady: {r.status_code} {r.text}")
            acks.append((body, sent, time.time()))
            n += 1
            if not memory or time.monotonic() - start - memory[-1][0] >= 60:
                memory.append((time.monotonic() - start, c.rss_mb()))
    memory.append((time.monotonic() - start, c.rss_mb()))
    return {"acks": acks, "memory": memory, "requests": n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--steady-seconds", type=float, default=600)
    args = parser.parse_args()
    settings = get_settings()
    work = Path(settings.home) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    admin = db.database_url(settings)
    path = dataset(work, args.events)
    bodies = batches(path, args.events)
    events = sum(len(orjson.loads(b)["batch"]) for b in bodies)
    one_file = work / f"collect-{events}.jsonl"
    with path.open("rb") as src, one_file.open("wb") as out:
        for i, line in enumerate(src):
            if i >= events:
                break
            out.write(line)
    print(f"{events:,} simulated events, {len(bodies):,} requests of {BATCH}")

    url = fresh_db(admin, "bench_collect_files")
    db.upgrade(url)
    quiesce(admin)
    pg0, me0 = postgres_cpu(), own_cpu()
    loaded_cpu: dict[str, float] = {}

    def cpu_at_end(_res: object) -> None:  # before the parser processes go away
        loaded_cpu.update(loader=own_cpu() - me0)

    t = time.perf_counter()
    [res] = ingest_paths(
        [one_file], url=url, settings=Settings(database_url=url), on_file=cpu_at_end
    )
    files_s = time.perf_counter() - t
    # the load's backend has exited: its CPU counts once the postmaster has reaped it
    time.sleep(0.5)
    loaded_cpu.update(postgres=postgres_cpu() - pg0)
    distinct = res.loaded
    files_rate = distinct / files_s
    files_cpu = loaded_cpu["loader"] + loaded_cpu["postgres"]
    print(f"files:     {distinct:,} events loaded in {files_s:.1f} s = {files_rate:,.0f} events/s")
    print(f"           CPU: the loader and its parser {loaded_cpu['loader']:.1f} s, PostgreSQL "
          f"{loaded_cpu['postgres']:.1f} s: {files_cpu / files_s:.2f} cores busy")  # fmt: skip

    files_url = url
    url = fresh_db(admin, "bench_collect_stream")
    db.upgrade(url)
    quiesce(admin, files_url)
    c = Collector(url, work / "collect-home-stream")
    try:
        c.settle()
        cpu0, mine0, pg0 = c.cpu_seconds(), time.process_time(), postgres_cpu()
        t0 = time.monotonic()
        post_all(c, bodies, args.clients)
        acked = time.monotonic()
        mine = time.process_time() - mine0
        done = wait_loaded(url, distinct)
        cpu = c.cpu_seconds()
        pg = postgres_cpu() - pg0
    finally:
        c.stop()
    stream_rate = distinct / (done - t0)
    print(f"streaming: {distinct:,} events in {done - t0:.1f} s (all acknowledged after "
          f"{acked - t0:.1f} s) = {stream_rate:,.0f} events/s = {stream_rate / files_rate:.2f} "
          "of the files' (target >= 0.7)")  # fmt: skip
    used = ", ".join(f"{k} {cpu[k] - cpu0.get(k, 0):.1f} s" for k in cpu)
    stream_cpu = sum(cpu[k] - cpu0.get(k, 0) for k in cpu) + mine + pg
    print(f"           CPU while it ran: {used}; the clients {mine:.1f} s; PostgreSQL {pg:.1f} s: "
          f"{stream_cpu / (done - t0):.2f} cores busy")  # fmt: skip
    cores = os.cpu_count() or 1
    floor = stream_cpu / cores
    print(f"           all of that CPU on {cores} fully busy cores would take {floor:.1f} s at best"
          f" = {distinct / floor / files_rate:.2f} of the files' events/s at most")  # fmt: skip

    stream_url = url
    url = fresh_db(admin, "bench_collect_steady")
    db.upgrade(url)
    quiesce(admin, stream_url)
    c = Collector(url, work / "collect-home-steady")
    try:
        out = steady(c, bodies, args.rate, args.steady_seconds)
        time.sleep(5)
    finally:
        c.stop()
    acks: list[tuple[bytes, float, float]] = out["acks"]  # type: ignore[assignment]
    latency = [(a - s) * 1000 for _, s, a in acks]
    # freshness: each call's acknowledgement to the commit of the load that holds it
    acked_at: dict[str, float] = {}
    for body, _, ack in acks:
        for call in orjson.loads(body)["batch"]:
            acked_at[call["messageId"]] = ack
    with psycopg.connect(url) as conn:
        loaded = conn.execute(
            "select e.message_id, a.finished_at from raw.events e"
            " join raw.load_audit a using (load_id)"
        ).fetchall()
    fresh = [
        finished.timestamp() - acked_at[m]
        for m, finished in loaded
        if m in acked_at and isinstance(finished, datetime)
    ]
    memory: list[tuple[float, float]] = out["memory"]  # type: ignore[assignment]
    sent = int(out["requests"]) * BATCH  # type: ignore[call-overload]
    print(
        f"steady:    {sent / args.steady_seconds:,.0f} events/s for {args.steady_seconds:.0f} s;"
        f" acknowledgement p50 {statistics.median(latency):.1f} ms, p99 "
        f"{_pct(latency, 0.99):.1f} ms (target <= 50); freshness p50 "
        f"{statistics.median(fresh):.2f} s, p95 {_pct(fresh, 0.95):.2f} s (target <= 2) over "
        f"{len(fresh):,} calls"
    )
    print("memory:    " + ", ".join(f"{s / 60:.0f} min {mb:.0f} MB" for s, mb in memory))


if __name__ == "__main__":
    main()
