"""
### train_models: retrain the CRM's models, tracked in MLflow

Weekly (Monday 03:00 UTC), or on demand from the trigger form. One task per model: AI segments,
churn risk, best send time, recommendations, customer value. Each training is an MLflow run
(params, held-out metrics, plots, tables) and registers a new version of `crm_<task>`; the
alias **champion** moves to it only when it beats the current champion on the same held-out
data. Scoring (`score_customers`) always uses the champions.

Same by hand: `crm train` (`--task churn` for one).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from crm.alerts import deadline
from crm.assets import table_asset

MARTS = table_asset("marts", "dim_customers")


@dag(
    dag_id="train_models",
    schedule="0 3 * * 1",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "ml", "mlflow"],
    deadline=deadline("train_models", timedelta(hours=8)),
    default_args={"owner": "data-science", "retries": 1, "retry_delay": timedelta(minutes=10)},
    params={
        "churn_window_days": Param(
            14,
            type="integer",
            minimum=1,
            maximum=180,
            title="Churn window (days)",
            description="Churned = no session and no order this long.",
        ),
        "recommendations": Param(
            20, type="integer", minimum=1, maximum=200, title="Recommendations per customer"
        ),
        "seed": Param(0, type="integer", title="Random seed"),
    },
)
def train_models() -> None:
    def _train(name: str) -> dict[str, object]:
        from ml.jobs import TrainParams, train

        p = get_current_context()["params"]
        params = TrainParams(
            churn_window_days=int(p["churn_window_days"]),
            recommendations=int(p["recommendations"]),
            seed=int(p["seed"]),
        )
        (result,) = train((name,), params)
        return {"task": name, "version": result.version, "champion": result.promoted,
                "why": result.reason}  # fmt: skip

    @task
    def segments() -> dict[str, object]:
        return _train("segments")

    @task
    def churn() -> dict[str, object]:
        return _train("churn")

    @task
    def send_time() -> dict[str, object]:
        return _train("send_time")

    @task
    def recommendations() -> dict[str, object]:
        return _train("recommendations")

    @task
    def value() -> dict[str, object]:
        return _train("value")

    # send times shrink towards segments; run the rest in parallel
    segments() >> send_time()
    churn()
    recommendations()
    value()


train_models()
