"""
### collected_events: events the collector loaded schedule the dbt build, debounced

Every `CRM_COLLECT_BUILD_MINUTES` (15 by default) it checks `raw.load_audit` for loads the
HTTP collector (`crm collect`) committed since it last looked. If there are any, it updates
the `raw.events` asset, which schedules `build_customer_models` on the fresh data (as a daily
file does); if not, its task is skipped and nothing runs. So dbt sees collected events within
minutes, never once per micro-batch.

Why a schedule and not an asset watcher on a message queue: the collector commits a load
every second; debouncing is a schedule, and reading `raw.load_audit` misses nothing while the
triggerer is down.

Same code by hand: `python -c "from crm.collect.announce import new_loads; print(new_loads())"`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from crm.alerts import deadline
from crm.assets import table_asset
from crm.settings import get_settings

RAW_EVENTS = table_asset("raw", "events")


@dag(
    dag_id="collected_events",
    schedule=timedelta(minutes=get_settings().collect_build_minutes),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "ingestion"],
    deadline=deadline("collected_events", timedelta(minutes=30)),
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
    },
)
def collected_events() -> None:
    @task(outlets=[RAW_EVENTS], execution_timeout=timedelta(minutes=5))
    def announce() -> dict[str, int]:
        """Counts of the loads announced; skipped (no asset update) when there were none."""
        from airflow.sdk.exceptions import AirflowSkipException

        from crm.collect.announce import new_loads

        found = new_loads()
        if found is None:
            raise AirflowSkipException("no collected load since the last announcement")
        return found

    announce()


collected_events()
