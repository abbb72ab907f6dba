"""
### score_customers: fresh scores for every customer after each dbt build

Runs whenever `build_customer_models` publishes the marts (asset `marts.dim_customers`), and
daily as a fallback. Loads each task's **champion** from the MLflow registry
(`models:/crm_<task>@champion`), scores every customer, and replaces `ml.customer_segments`,
`ml.segment_catalog`, `ml.churn_scores`, `ml.send_times`, `ml.recommendations`,
`ml.customer_value` and `ml.customer_value_horizons` in one transaction (readers never see half
a run), then writes one Redis key per customer (`crm:customer:<id>`, with a TTL) for the shop's
site and apps. Fails with a clear message when a task has no champion yet: trigger
`train_models` first.

Same by hand: `crm score`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from crm.alerts import deadline
from crm.assets import table_asset

MARTS = table_asset("marts", "dim_customers")
SCORES = table_asset("ml", "churn_scores")


@dag(
    dag_id="score_customers",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 6 * * *", timezone="UTC"), assets=[MARTS]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "ml"],
    deadline=deadline("score_customers", timedelta(hours=2)),
    default_args={"owner": "data-science", "retries": 2, "retry_delay": timedelta(minutes=5)},
)
def score_customers() -> None:
    @task(outlets=[SCORES])
    def score() -> dict[str, object]:
        from ml.jobs import score as run

        result = run()
        return {"rows": result["rows"], "redis_keys": result["redis_keys"],
                "models": result["models"]}  # fmt: skip

    score()


score_customers()
