"""MLflow: where runs go, how models are registered, when ``champion`` moves.

The tracking and registry store is PostgreSQL: a database ``<crm database>_mlflow`` on the
project's server (the embedded one by default; ``shop_crm_mlflow`` there), artifacts under
CRM_HOME/mlartifacts; CRM_MLFLOW_TRACKING_URI points elsewhere (e.g. a tracking server).
One registered model per task, ``crm_<task>``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from crm import db
from crm.settings import Settings, get_settings

CHAMPION = "champion"
log = logging.getLogger(__name__)


def model_name(task: str) -> str:
    return f"crm_{task}"


def sqlalchemy_url(url: str) -> str:
    """A libpq URL as MLflow's SQLAlchemy store wants it (the psycopg 3 driver)."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def tracking_uri(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    url = db.database_url(settings)
    name = f"{db.conn_info(url).dbname}_mlflow"  # one store per CRM database
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return sqlalchemy_url(db.with_database(url, name))


def artifact_root(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    path = Path(settings.home).resolve() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def setup(settings: Settings | None = None) -> str:
    """Point MLflow at our store and experiment; returns the experiment id."""
    import mlflow

    settings = settings or get_settings()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(
            settings.mlflow_experiment, artifact_location=artifact_root(settings)
        )
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def _pyfunc_class() -> type:
    from mlflow.pyfunc import PythonModel

    class _TaskModel(PythonModel):
        """A task's fitted model. ``load_champion`` returns the object inside; it scores a
        Snapshot (``.score(snapshot)``), not a feature frame."""

        def __init__(self, model: Any) -> None:
            self.model = model

        def predict(self, context, model_input, params=None):
            raise TypeError(
                "shop-crm models score whole snapshots: use ml.tracking.load_champion(task)"
                ".score(ml.data.load_snapshot())"
            )

    return _TaskModel


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    promoted: bool
    reason: str


def log_and_register(task: str, model: Any, metric: str, value: float,
                     champion_value: float | None) -> Registered:  # fmt: skip
    """Log ``model`` in the active run, register it, and move ``champion`` to it when it beats
    the current champion on the same held-out data (or when there is none)."""
    import mlflow
    from mlflow import MlflowClient

    name = model_name(task)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=_pyfunc_class()(model), pip_requirements=["shop-crm"],
        registered_model_name=name,
    )  # fmt: skip
    client = MlflowClient()
    version = str(info.registered_model_version)
    if champion_value is None:
        promote, reason = True, "no champion yet"
    elif value > champion_value:
        promote, reason = True, f"{metric} {value:.4f} > champion's {champion_value:.4f}"
    else:
        promote, reason = False, f"{metric} {value:.4f} <= champion's {champion_value:.4f}"
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "heldout_metric", metric)
    client.set_model_version_tag(name, version, "heldout_value", f"{value:.6f}")
    mlflow.set_tag("promoted", str(promote).lower())
    mlflow.set_tag("promotion_reason", reason)
    run = mlflow.active_run()
    return Registered(name, version, run.info.run_id if run else "", promote, reason)


def load_champion(task: str) -> tuple[Any, str] | None:
    """(model, version) behind ``models:/crm_<task>@champion``, or None before any training."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = model_name(task)
    try:
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        return None
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    return loaded.unwrap_python_model().model, str(version)
