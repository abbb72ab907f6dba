"""The crm command line, as a person runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from crm.cli import app
from crm.settings import Settings

runner = CliRunner()


def test_simulate_then_ingest_then_ingest_again(
    tmp_path: Path, crm_env: Settings, db_url: str
) -> None:
    out = tmp_path / "shop"
    r = runner.invoke(
        app, ["simulate", "--users", "80", "--days", "3", "--seed", "9", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "events" in r.output and (out / "manifest.json").exists()

    r = runner.invoke(app, ["ingest", str(out / "events"), "--json"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.output)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(x["loaded"] for x in results) == manifest["events"]

    r = runner.invoke(app, ["ingest", str(out / "events"), "--json"])
    assert r.exit_code == 0
    assert all(x["status"] == "skipped" for x in json.loads(r.output))
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select count(*) from raw.events").fetchone() == (manifest["events"],)


def test_db_upgrade_reports_up_to_date(crm_env: Settings) -> None:
    r = runner.invoke(app, ["db", "upgrade"])
    assert r.exit_code == 0 and "up to date" in r.output


def test_bad_setting_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CRM_DATABASE_URL": "mysql://nope", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "crm.cli", "ingest", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "CRM_DATABASE_URL" in proc.stderr and "postgresql://" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_path_is_a_clear_error(crm_env: Settings, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "crm.cli", "ingest", str(tmp_path / "nope.jsonl")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_contract_schema_is_the_documented_one() -> None:
    r = runner.invoke(app, ["contract", "schema"])
    assert r.exit_code == 0
    documented = json.loads(
        (Path(__file__).parent.parent / "docs" / "event.schema.json").read_text()
    )
    assert json.loads(r.output) == documented, "run `make docs` to refresh docs/event.schema.json"


def test_db_clock_sets_the_pipelines_now_for_new_sessions_and_resets_it(
    crm_env: Settings, db_url: str
) -> None:
    from datetime import UTC, datetime

    r = runner.invoke(app, ["db", "clock", "--at", "2026-02-13T08:30:00+00:00"])
    assert r.exit_code == 0, r.output
    assert "2026-02-13 08:30 UTC (set with crm db clock --at)" in r.output
    with psycopg.connect(db_url) as conn:
        row = conn.execute("select crm.now(), now()").fetchone()
    assert row is not None and row[0] == datetime(2026, 2, 13, 8, 30, tzinfo=UTC) != row[1]
    r = runner.invoke(app, ["db", "clock", "--reset"])
    assert r.exit_code == 0 and "(the wall clock)" in r.output
    with psycopg.connect(db_url) as conn:
        row = conn.execute("select crm.now(), now()").fetchone()
    assert row is not None and row[0] == row[1]


def test_campaigns_run_until_catches_up_the_hourly_runs_each_sending_what_came_due(
    shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from crm.settings import get_settings

    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "hello.yaml").write_text(
        "id: hello\nname: Hello\naudience: {lifecycle: [active, buyer, repeat_buyer]}\n"
        "messages: [{segment: '*', locale: '*', title: Hi, body: Hello}]\n"
        "channels: [push]\nschedule: {kind: once, at: '2026-02-26T06:00:00+00:00'}\n"
        "send_time: {mode: fixed, hour: 12}\nholdout_percent: 10\nend_date: 2026-12-31\n"
    )
    monkeypatch.setenv("CRM_DATABASE_URL", shop)
    monkeypatch.setenv("CRM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRM_PUSH_CAP_PER_DAY", "5")
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["campaigns", "run", "--at", "2026-02-26T06:05:00+00:00",
                                "--until", "2026-02-27T06:05:00+00:00", "--fake-fcm",
                                "--folder", str(folder)])  # fmt: skip
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    with psycopg.connect(shop) as conn:
        sent = conn.execute(
            "select slot, sent_at from crm.deliveries where campaign_id = 'hello'"
            " and state = 'sent'"
        ).fetchall()
        now = conn.execute("select crm.now()").fetchone()
    # noon in every zone: slots spread over the day, each sent by the first run after it
    assert len({slot for slot, _ in sent}) > 3, sent
    assert all(timedelta(0) <= at - slot < timedelta(hours=1) for slot, at in sent), sent
    assert now == (datetime(2026, 2, 27, 6, 5, tzinfo=UTC),)
    assert f"{len(sent):,} sent" in r.output
