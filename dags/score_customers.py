"""
### score_customers: fresh scores for every customer after each dbt build, in shards

Runs whenever `build_customer_models` publishes the marts (asset `marts.dim_customers`), and
daily as a fallback. Pins each task's **champion** from the MLflow registry
(`models:/crm_<task>@champion`) and splits the customers into shards (a stable hash of the
customer id; `CRM_SCORE_SHARDS`, or one per `CRM_SCORE_SHARD_CUSTOMERS` customers), each shard
a mapped task on whichever worker is free:

1. `plan`: the job (champion versions, shard count, staging tables); `shards` lists them;
2. `item_stats` per shard, then `build_items` once: the shop's item state (co-visitation,
   EASE, popularity) the shards share;
3. `score_shard` per shard: its customers' segments, churn, send times, recommendations and
   predicted value, into staging (a failed shard retries alone);
4. `swap`: every `ml.*` table replaced in one transaction once all shards have scored (until
   then readers keep the previous run, and Redis is untouched);
5. `publish` per shard: its customers' Redis keys (`crm:customer:<id>`, with a TTL); `finish`:
   the shared keys and the run's meta.

Fails with a clear message when a task has no champion yet: trigger `train_models` first.

Same by hand: `crm score` (`--workers N` for parallel processes).
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
    @task
    def plan() -> str:
        from ml.shards import plan as new_job

        return new_job().job_id

    @task
    def shards(job_id: str) -> list[int]:
        from crm.db import database_url
        from ml.shards import load_job

        return list(range(load_job(job_id, database_url()).shards))

    @task(map_index_template="shard {{ task.op_kwargs['shard'] }}")
    def item_stats(job_id: str, shard: int) -> dict[str, int]:
        from ml.shards import items_step

        return items_step(job_id, shard)

    @task
    def build_items(job_id: str) -> dict[str, int]:
        from ml.shards import build_items as build

        return build(job_id)

    @task(map_index_template="shard {{ task.op_kwargs['shard'] }}")
    def score_shard(job_id: str, shard: int) -> dict[str, int]:
        from ml.shards import score_step

        return score_step(job_id, shard)

    @task(outlets=[SCORES])
    def swap(job_id: str) -> dict[str, int]:
        from ml.shards import swap as replace

        return replace(job_id)

    @task(map_index_template="shard {{ task.op_kwargs['shard'] }}")
    def publish(job_id: str, shard: int) -> int:
        from ml.shards import publish_step

        return publish_step(job_id, shard)

    @task
    def finish(job_id: str) -> dict[str, object]:
        from ml.shards import finish as done

        result = done(job_id)
        return {"rows": result["rows"], "redis_keys": result["redis_keys"],
                "models": result["models"]}  # fmt: skip

    job_id = plan()
    each = shards(job_id)
    stats = item_stats.partial(job_id=job_id).expand(shard=each)
    items = build_items(job_id)
    scored = score_shard.partial(job_id=job_id).expand(shard=each)
    swapped = swap(job_id)
    published = publish.partial(job_id=job_id).expand(shard=each)
    stats >> items >> scored >> swapped >> published >> finish(job_id)


score_customers()
