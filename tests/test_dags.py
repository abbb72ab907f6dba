"""The DAGs: they import cleanly, read well in the UI, and run end to end in-process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pendulum
import psycopg
import pytest

from crm.settings import PROJECT_ROOT, Settings
from tests.conftest import insert_out_of_contract_event

DAGS = PROJECT_ROOT / "dags"


def without_deadline(dag):
    """dag.test() in Airflow 3.3.2 looks deadline alerts up by id before anything stored them
    (AttributeError: 'dict' object has no attribute 'hex'); the scheduler stores them first.
    In-process test runs go without the deadline (its presence is checked above, its callback
    below)."""
    assert dag.deadline
    dag.deadline = None
    return dag


@pytest.fixture(scope="module")
def dagbag(airflow_home: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dagbag_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "ingest_events" in dagbag.dags


def test_every_dag_is_documented_owned_tagged_and_retried(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert dag.tags and "shop-crm" in dag.tags, dag_id
        assert dag.deadline, dag_id  # Airflow 3's successor of SLAs
        for task in dag.tasks:
            assert task.owner not in (None, "", "airflow"), (dag_id, task.task_id)
            assert task.retries >= 1, (dag_id, task.task_id)


def test_ingest_dag_produces_the_raw_events_asset(dagbag) -> None:
    dag = dagbag.dags["ingest_events"]
    outlets = [o for t in dag.tasks for o in t.outlets]
    assert len(outlets) == 1
    assert outlets[0].uri.startswith("postgres://") and outlets[0].uri.endswith("/raw/events")


def test_build_dag_runs_each_model_after_the_ingest_asset(dagbag) -> None:
    dag = dagbag.dags["build_customer_models"]
    ingest = dagbag.dags["ingest_events"]
    [produced] = [o for t in ingest.tasks for o in t.outlets]
    assert produced.uri in str(dag.timetable.asset_condition)  # scheduled on what ingest makes
    ids = {t.task_id for t in dag.tasks}
    for model in ("int_identities_stitched", "int_events_sessionized", "dim_customers",
                  "customer_features", "fct_orders", "push_devices"):  # fmt: skip
        assert f"dbt.{model}.run" in ids and f"dbt.{model}.test" in ids
    publish = dag.get_task("publish_marts")
    assert publish.outlets and publish.outlets[0].uri.endswith("/marts/dim_customers")
    assert len(publish.upstream_task_ids) > 5  # waits for every model's tests


def _land(small_shop: Path, landing: Path, day: str) -> None:
    src = small_shop / "events" / f"dt={day}"
    dst = landing / "events" / f"dt={day}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)


def test_dag_test_loads_the_interval_and_is_idempotent(
    airflow_home: Path, crm_env: Settings, small_shop: Path, db_url: str
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    _land(small_shop, crm_env.landing_dir, "2026-01-03")
    dag = without_deadline(DagBag(dag_folder=str(DAGS / "ingest_events.py")).dags["ingest_events"])
    # The interval that ends at 2026-01-04 00:00 is the UTC day 2026-01-03.
    run = dag.test(logical_date=pendulum.datetime(2026, 1, 4, tz="UTC"))
    assert run.state == "success"
    with psycopg.connect(db_url) as conn:
        loaded = conn.execute("select count(*), min(source) from raw.load_audit").fetchone()
        events = conn.execute("select count(*) from raw.events").fetchone()
    assert loaded is not None and loaded[0] == 1 and loaded[1].startswith("airflow:")
    assert events is not None and events[0] > 100

    again = dag.test(logical_date=pendulum.datetime(2026, 1, 4, 0, 0, 1, tz="UTC"))
    assert again.state == "success"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select count(*) from raw.events").fetchone() == events
        assert conn.execute("select count(*) from raw.load_audit").fetchone() == (1,)


def test_dag_fails_clearly_when_the_day_has_not_arrived(
    airflow_home: Path, crm_env: Settings, db_url: str
) -> None:
    from crm.errors import IngestError
    from crm.ingest.tasks import ingest_day

    with pytest.raises(IngestError, match="has not arrived"):
        ingest_day(date(2026, 5, 1), settings=crm_env)
    assert ingest_day(date(2026, 5, 1), settings=crm_env, allow_empty=True).files == 0


def test_partial_file_keeps_failing_until_replaced(
    crm_env: Settings, small_shop: Path, db_url: str
) -> None:
    from crm.errors import IngestError
    from crm.ingest.tasks import day_folder, ingest_day

    _land(small_shop, crm_env.landing_dir, "2026-01-02")
    [f] = list(day_folder(crm_env.landing_dir, date(2026, 1, 2)).iterdir())
    full = f.read_bytes()
    f.write_bytes(full[: len(full) // 2])
    for _ in range(2):  # a retry must not turn it green
        with pytest.raises(IngestError, match="truncated"):
            ingest_day(date(2026, 1, 2), settings=crm_env)
    f.write_bytes(full)
    summary = ingest_day(date(2026, 1, 2), settings=crm_env)
    assert summary.loaded > 0 and summary.duplicates > 0


@pytest.mark.slow
def test_build_dag_builds_the_marts_and_stops_at_a_failing_test(
    airflow_home: Path, crm_env: Settings, small_shop: Path, db_url: str
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from crm.ingest.load import ingest_paths

    ingest_paths([small_shop / "events"], settings=crm_env)
    dag = without_deadline(
        DagBag(dag_folder=str(DAGS / "build_customer_models.py")).dags["build_customer_models"]
    )
    for task in dag.tasks:  # a retry waits minutes in dag.test(); the verdict is the same
        task.retries = 0
    run = dag.test()
    assert run.state == "success"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select count(*) from marts.dim_customers").fetchone()[0] > 100  # type: ignore[index]
    insert_out_of_contract_event(db_url)
    failed = dag.test()
    assert failed.state == "failed"
    states = {ti.task_id: ti.state for ti in failed.get_task_instances()}
    assert states["dbt.stg_events__calls.test"] == "failed"
    assert states["publish_marts"] == "upstream_failed"
    assert states["dbt.dim_customers.run"] == "upstream_failed"


def test_ml_dags_chain_on_the_marts_asset(dagbag) -> None:
    score = dagbag.dags["score_customers"]
    assert "marts/dim_customers" in str(score.timetable.asset_condition)
    steps = ["plan", "shards", "item_stats", "build_items", "score_shard", "swap", "publish",
             "finish"]  # fmt: skip
    assert [t.task_id for t in score.topological_sort()] == steps
    mapped = {t.task_id for t in score.tasks if t.is_mapped}
    assert mapped == {"item_stats", "score_shard", "publish"}
    swap = score.task_dict["swap"]
    assert next(o.uri for o in swap.outlets).endswith("/ml/churn_scores")
    assert swap.upstream_task_ids == {"plan", "score_shard"}
    train = dagbag.dags["train_models"]
    assert {t.task_id for t in train.tasks} == {
        "segments",
        "churn",
        "send_time",
        "recommendations",
        "value",
    }
    assert train.params["churn_window_days"] == 14
    assert "send_time" in train.task_dict["segments"].downstream_task_ids


@pytest.mark.slow
def test_train_then_score_dags_publish_champion_scores(
    airflow_home: Path,
    ml_shop: tuple[str, Path],
    pg_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from crm import db
    from crm.settings import get_settings
    from ml.tracking import sqlalchemy_url
    from tests.conftest import temp_database

    db.upgrade(ml_shop[0])
    with temp_database(pg_server_url, "crm_test_mlflow") as tracking:
        monkeypatch.setenv("CRM_DATABASE_URL", ml_shop[0])
        monkeypatch.setenv("CRM_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("CRM_MLFLOW_TRACKING_URI", sqlalchemy_url(tracking))
        get_settings.cache_clear()
        started = pendulum.now("UTC")
        try:
            bag = DagBag(dag_folder=str(DAGS))
            train = without_deadline(bag.dags["train_models"]).test(run_conf={"recommendations": 5})
            assert train.state == "success"
            monkeypatch.setenv("CRM_SCORE_SHARDS", "2")
            get_settings.cache_clear()
            score = without_deadline(bag.dags["score_customers"]).test()
            assert score.state == "success"
            tis = [(ti.task_id, ti.map_index, ti.state) for ti in score.get_task_instances()]
            assert sorted(i for t, i, s in tis if t == "score_shard" and s == "success") == [0, 1]
            with psycopg.connect(ml_shop[0]) as conn:
                per_customer = conn.execute("select max(rank) from ml.recommendations").fetchone()
                runs = conn.execute(
                    "select count(distinct task) from ml.score_runs"
                    " where model_version = '1' and scored_at >= %s",
                    (started,),
                ).fetchone()
            assert per_customer == (5,)  # the trigger form's param reached the recommender
            assert runs == (5,)
            _no_customer_in_mlflow_runs(ml_shop[0], tmp_path / "home" / "mlartifacts")
        finally:
            get_settings.cache_clear()


def _strings(obj: object, depth: int = 0, seen: dict[int, object] | None = None) -> Iterator[str]:
    """Every string reachable from a fitted model: attributes, containers, arrays, frames."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, str | bytes):
        yield obj if isinstance(obj, str) else obj.decode("latin-1")
        return
    seen = {} if seen is None else seen  # holds what it saw, so no id is reused meanwhile
    if id(obj) in seen or depth > 12:
        return
    seen[id(obj)] = obj
    if isinstance(obj, pd.DataFrame):
        for part in (obj.index, obj.columns, *(obj[c] for c in obj.columns)):
            yield from _strings(part.to_numpy(), depth + 1, seen)
    elif isinstance(obj, pd.Series | pd.Index):
        yield from _strings(obj.to_numpy(), depth + 1, seen)
        if isinstance(obj, pd.Series):
            yield from _strings(obj.index.to_numpy(), depth + 1, seen)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OUS":
            for v in obj.ravel():
                yield from _strings(v, depth + 1, seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, depth + 1, seen)
            yield from _strings(v, depth + 1, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _strings(v, depth + 1, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _strings(vars(obj), depth + 1, seen)


def _no_customer_in_mlflow_runs(url: str, artifacts: Path) -> None:
    """Run parameters, tags, every logged file and every string inside the registered models
    name no customer: the models hold parameters, not people (docs/privacy.md)."""
    import pickle
    import re

    import mlflow

    with psycopg.connect(url) as conn:
        ids = {
            r[0]
            for r in conn.execute("select identifier from intermediate.int_identities_stitched")
        }
    token = re.compile(r"[A-Za-z0-9:_.-]+")
    said: list[str] = []
    for run in mlflow.search_runs(search_all_experiments=True, output_format="list"):
        said += [str(v) for v in (*run.data.params.values(), *run.data.tags.values())]
    assert said
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in files)  # the evaluation tables
    said += [p.read_bytes().decode("latin-1") for p in files]
    models = [p for p in files if p.name == "python_model.pkl"]
    assert len(models) == 5  # one per task
    for path in models:
        model = pickle.loads(path.read_bytes())
        strings = list(_strings(model))
        assert strings  # the walk reaches the fitted state (feature and segment names)
        said += strings
    leaked = {t for text in said for t in token.findall(text)} & ids
    assert not leaked, sorted(leaked)[:5]


def test_journeys_dag_reports_hourly_and_pauses_from_its_form(dagbag) -> None:
    dag = dagbag.dags["journeys"]
    assert {"pause", "resume"} <= set(dag.params.keys())
    assert [t.task_id for t in dag.tasks] == ["status"]


def test_send_dag_runs_hourly_and_after_scores_with_a_trigger_form(dagbag) -> None:
    dag = dagbag.dags["send_campaigns"]
    assert "ml/churn_scores" in str(dag.timetable.asset_condition)
    assert {"campaigns", "launch", "adhoc", "dry_run"} <= set(dag.params.keys())
    assert dag.task_dict["sent"].outlets[0].uri.endswith("/crm/deliveries")
    assert dag.task_dict["send"].is_mapped
    assert dag.task_dict["send"].upstream_task_ids == {"senders"}
    assert "plan" in dag.task_dict["senders"].upstream_task_ids


def test_send_dag_launches_from_the_form_and_a_dry_run_records_nothing(
    airflow_home: Path,
    ml_shop: tuple[str, Path],
    pg_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fake,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from crm import db
    from crm.settings import get_settings
    from tests.conftest import ML_DB, temp_database

    def count(url: str, table: str) -> int:
        with psycopg.connect(url) as conn:
            return int(conn.execute(f"select count(*) from {table}").fetchone()[0])  # type: ignore[index]

    adhoc = {
        "id": "flash-sale",
        "name": "Flash sale",
        "audience": {"lifecycle": ["active"]},
        "messages": [{"title": "Today only", "body": "20% off {{ top_category }}"}],
        "channels": ["push"],
        "schedule": {"kind": "once", "at": "2026-01-01T09:00:00+00:00"},
        "end_date": "2099-12-31",
    }
    with temp_database(pg_server_url, "crm_test_send_dag", ML_DB) as url:
        db.upgrade(url)
        monkeypatch.setenv("CRM_DATABASE_URL", url)
        monkeypatch.setenv("CRM_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("CRM_FCM_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("CRM_FCM_CA_FILE", str(fake.ca_file))
        monkeypatch.setenv("CRM_SEND_TASKS", "3")  # up to 3 send tasks ...
        monkeypatch.setattr("notify.run.SEND_TASK_MIN", 1)  # ... one per due delivery
        get_settings.cache_clear()
        try:
            dag = without_deadline(
                DagBag(dag_folder=str(DAGS / "send_campaigns.py")).dags["send_campaigns"]
            )
            for task in dag.tasks:  # a retry waits minutes in dag.test(); the verdict is the same
                task.retries = 0
            dry = dag.test(run_conf={"adhoc": adhoc, "dry_run": True})
            assert dry.state == "success"
            assert count(url, "crm.deliveries") == count(url, "crm.campaign_runs") == 0
            # dag.test() keeps the previous run's conf as the params' defaults: say each one
            at = pendulum.datetime(2026, 2, 26, 7, 5, tz="UTC")  # the hour the run stands for
            real = dag.test(
                logical_date=at,
                run_conf={"adhoc": adhoc, "launch": ["welcome_new_users"], "dry_run": False},
            )
            assert real.state == "success"
            with psycopg.connect(url) as conn:
                runs = conn.execute(
                    "select campaign_id, source, occurrence from crm.campaign_runs order by 1"
                ).fetchall()
            assert runs == [("flash-sale", "trigger form", at),
                            ("welcome_new_users", "trigger form", at)]  # fmt: skip
            assert count(url, "crm.deliveries") > 0
            # a day later every slot has come: three send tasks share the due deliveries
            later_at = at.add(days=1)
            later = dag.test(logical_date=later_at,
                             run_conf={"adhoc": None, "launch": [], "dry_run": False})  # fmt: skip
            sends = [ti for ti in later.get_task_instances() if ti.task_id == "send"]
            assert len(sends) == 3 and {ti.state for ti in sends} == {"success"}
            delivered = [m["data"]["delivery_id"] for m in fake.sent]
            assert len(delivered) == len(set(delivered)) > 0  # the three never shared one
            due = f"crm.deliveries where state in ('planned', 'sending') and slot <= '{later_at}'"
            assert count(url, due) == 0
            broken = dag.test(run_conf={"adhoc": {**adhoc, "channels": ["pigeon"]}, "launch": []})
            assert broken.state == "failed"
        finally:
            get_settings.cache_clear()


def test_a_missed_deadline_warns_ops_through_apprise(hook, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from crm.alerts import deadline_missed

    host, got = hook
    monkeypatch.setenv("CRM_APPRISE_OPS_URL", f"json://{host}/ops")
    asyncio.run(deadline_missed({"dag_run": None}, dag_id="send_campaigns", within="0:45:00"))
    ((path, body),) = got
    assert path == "/ops" and "send_campaigns" in body["message"] and "0:45:00" in body["message"]


def test_collected_loads_update_the_raw_events_asset_once(
    airflow_home: Path, crm_env: Settings, db_url: str, tmp_path: Path
) -> None:
    """collected_events skips while the collector loaded nothing new, and updates the
    raw.events asset (scheduling build_customer_models) once per batch of new loads."""
    import json

    from airflow.dag_processing.dagbag import DagBag

    from crm.collect.loader import load_ready

    dag = DagBag(dag_folder=str(DAGS / "collected_events.py")).dags["collected_events"]
    assert next(o.uri for t in dag.tasks for o in t.outlets).endswith("/raw/events")
    dag = without_deadline(dag)

    def state() -> str:
        run = dag.test()
        [ti] = run.get_task_instances()
        return str(ti.state)

    def asset_events() -> int:
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import func, select

        uri = next(o.uri for t in dag.tasks for o in t.outlets)
        with create_session() as session:
            return int(session.scalar(
                select(func.count()).select_from(AssetEvent)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .where(AssetModel.uri == uri, AssetEvent.source_dag_id == "collected_events")
            ) or 0)  # fmt: skip

    before = asset_events()
    assert state() == "skipped"
    ready = tmp_path / "ready"
    ready.mkdir()
    for n in range(2):  # two micro-batches of the collector's source "web"
        (ready / f"web.{n + 1}.1.jsonl").write_text(json.dumps({
            "type": "track", "messageId": f"c-{n}", "userId": "u1", "event": "Product Viewed",
            "timestamp": "2026-01-02T10:00:00Z"}) + "\n")  # fmt: skip
    assert load_ready(ready, db_url, crm_env) == (2, None)
    assert state() == "success"
    assert state() == "skipped"  # announced once
    assert asset_events() == before + 1
