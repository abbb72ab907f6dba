"""
### build_customer_models: dbt builds the customer tables after every load

Runs whenever `ingest_events` updates the `raw.events` asset (and can be triggered by hand).
Builds the dbt project in `dbt_project/` — staging tables, roll-ups, identity stitching, sessions,
orders, lifecycle segments, customer features — and runs each model's tests right after it:
every model is a task group (`run`, `test`) in the graph.

* A failing dbt test fails its task (the log names the test and the failing rows' query) and
  stops everything downstream of it, so `publish_marts` does not run and the DAGs scheduled on
  the marts asset (scoring, campaigns) are not triggered with bad data.
* Incremental models (every staging table, sessions, and the roll-ups the customer marts
  aggregate) only process the loads they have not seen yet (listed from `raw.load_audit`),
  and the tests of event-sized tables check those loads. Trigger with **full_refresh** to
  rebuild them from scratch and test every row.
* Thresholds analysts tune (session gap, lifecycle days) are dbt vars in `dbt_project.yml`.

Same build by hand: `crm transform` (add `--full-refresh` to rebuild).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from cosmos import (
    DbtTaskGroup,
    ExecutionConfig,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)
from cosmos.constants import LoadMode, TestBehavior

from crm.alerts import deadline
from crm.assets import table_asset
from crm.transform import DBT_PROJECT, dbt_env, dbt_executable

RAW_EVENTS = table_asset("raw", "events")
MARTS = table_asset("marts", "dim_customers")
DBT_ENV = dbt_env(start=False)


@dag(
    dag_id="build_customer_models",
    schedule=[RAW_EVENTS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "dbt", "analytics"],
    deadline=deadline("build_customer_models", timedelta(hours=3)),
    default_args={
        "owner": "analytics",
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
    },
    params={
        "full_refresh": Param(
            False,
            type="boolean",
            title="Full refresh",
            description="Rebuild incremental models from scratch (dbt --full-refresh).",
        ),
    },
)
def build_customer_models() -> None:
    @task
    def ensure_database() -> str:
        """Start the embedded PostgreSQL when no CRM_DATABASE_URL is set; check migrations."""
        from crm import db

        url = db.database_url()
        with db.connect(url) as conn:
            db.require_migrated(conn)
        return db.conn_info(url).dbname

    dbt = DbtTaskGroup(
        group_id="dbt",
        project_config=ProjectConfig(DBT_PROJECT, env_vars=DBT_ENV),
        profile_config=ProfileConfig(
            profile_name="shop_crm",
            target_name="main",
            profiles_yml_filepath=DBT_PROJECT / "profiles.yml",
        ),
        execution_config=ExecutionConfig(dbt_executable_path=dbt_executable()),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_LS,
            test_behavior=TestBehavior.AFTER_EACH,
            # tests reading several models (the revenue and segment invariants) run after all
            # of them, as tasks of their own
            should_detach_multiple_parents_tests=True,
            # Our own assets chain the DAGs; cosmos's per-model lineage URIs cannot name a
            # Unix-socket host (the embedded server).
            emit_datasets=False,
        ),
        operator_args={
            "install_deps": False,
            "full_refresh": "{{ params.full_refresh }}",
            # a full refresh also tests every row (incremental runs test the loads they read)
            "vars": {"test_all_rows": "{{ params.full_refresh }}"},
        },
    )

    @task(outlets=[MARTS])
    def publish_marts() -> None:
        """Reached only when every model built and every test passed: marks the marts fresh."""

    ensure_database() >> dbt >> publish_marts()


build_customer_models()
