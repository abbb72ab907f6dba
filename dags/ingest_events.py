"""
### ingest_events: load each day's event files into PostgreSQL

Every day, after the UTC day [start, end) has ended, loads the files that landed in
`$CRM_LANDING_DIR/events/dt=<interval date>/` (JSON Lines, optionally gzip, Segment Spec
calls) into `raw.events`: validated, deduplicated on `messageId`, partitioned by event date.

* Bad lines are quarantined in `raw.rejected_events` with the reason; they never stop the
  good ones. Every file gets a row in `raw.load_audit` (lines = loaded + duplicates + rejected).
* Re-running an interval changes nothing: files already loaded are skipped.
* The run fails when no file arrived for the day (set **allow_empty** to accept an empty day)
  or when a file could not be loaded completely (a truncated gzip keeps failing until a
  complete copy replaces it).
* `airflow dags test ingest_events 2026-01-06` loads 2026-01-05 (the interval ending then);
  the trigger form's **day** loads any day directly.
* On success it updates the `raw.events` asset, which schedules `build_customer_models`.

Same code by hand: `crm ingest <files>`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from crm.alerts import deadline
from crm.assets import table_asset
from crm.settings import get_settings

RAW_EVENTS = table_asset("raw", "events")


@dag(
    dag_id="ingest_events",
    # One run per UTC day, after the day has ended, covering [day, day + 1).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.parse(get_settings().ingest_start_date, tz="UTC"),
    catchup=True,
    max_active_runs=3,
    doc_md=__doc__,
    tags=["shop-crm", "ingestion"],
    deadline=deadline("ingest_events", timedelta(hours=2)),
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
    },
    params={
        "day": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Day to load (optional)",
            description="Load this UTC day instead of the run's data interval.",
        ),
        "allow_empty": Param(
            False,
            type="boolean",
            title="Accept a day without files",
            description="Succeed (loading nothing) when no file landed for the interval.",
        ),
    },
)
def ingest_events() -> None:
    @task(outlets=[RAW_EVENTS], execution_timeout=timedelta(hours=2))
    def load_day(  # type: ignore[no-untyped-def]
        data_interval_start: pendulum.DateTime | None = None, params=None, dag_run=None
    ):
        """Ingest the interval's landing folder; returns the day's counts (shown as XCom)."""
        from crm.ingest.tasks import ingest_day

        assert data_interval_start is not None
        day = params.get("day") if params else None
        summary = ingest_day(
            pendulum.parse(day).date() if day else data_interval_start.date(),
            source=f"airflow:{dag_run.run_id}" if dag_run else "airflow",
            allow_empty=bool(params and params.get("allow_empty")),
        )
        return summary.as_dict()

    @task
    def apply_retention() -> dict[str, int]:
        """Drop raw day partitions older than CRM_RAW_RETENTION_DAYS (cheap when none are)."""
        from datetime import date

        from crm import db, privacy
        from crm.settings import get_settings

        with db.connect() as conn:
            return privacy.apply_retention(conn, get_settings().raw_retention_days, date.today())

    load_day() >> apply_retention()


ingest_events()
