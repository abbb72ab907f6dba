"""MLflow: where runs go, how models are registered, when ``champion`` moves.

The tracking and registry store is PostgreSQL: a database ``<crm database>_mlflow`` on the
project's server (the embedded one by default; ``shop_crm_mlflow`` there), artifacts under
CRM_HOME/mlartifacts; CRM_MLFLOW_TRACKING_URI points elsewhere (e.g. a tracking server).
One registered model per task, ``crm_<task>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from crm import db
from crm.errors import CrmError
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


def use_credentials(settings: Settings, job: Literal["train", "score"] | None) -> None:
    """Authenticate this process to the MLflow server as the job's own user (MLflow's client
    reads MLFLOW_TRACKING_USERNAME / _PASSWORD), or as no one when the job has none set."""
    user, password = {
        "train": (settings.mlflow_train_username, settings.mlflow_train_password),
        "score": (settings.mlflow_score_username, settings.mlflow_score_password),
        None: (None, None),
    }[job]
    if user and password:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password.get_secret_value()
    else:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


def setup(settings: Settings | None = None, job: Literal["train", "score"] | None = None) -> str:
    """Point MLflow at our store and experiment, as ``job``'s MLflow user; returns the
    experiment id."""
    import mlflow

    settings = settings or get_settings()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    use_credentials(settings, job)
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        # a tracking server keeps artifacts itself (--serve-artifacts); a local store here
        local = not uri.startswith(("http://", "https://"))
        exp_id = mlflow.create_experiment(
            settings.mlflow_experiment, artifact_location=artifact_root(settings) if local else None
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


class UntrustedChampion(CrmError):
    """The version behind ``champion`` is not one the training job promoted, or its artifacts
    changed since: it is not loaded (its pickle would run code in this process)."""


def artifact_digest(folder: Path) -> str:
    """sha256 over every file below ``folder``: its relative path and its content's sha256,
    in path order."""
    outer = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(folder).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def _download(name: str, version: str, into: Path) -> Path:
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(into)
        )
    )


def record_promotion(url: str | None, name: str, version: str, run_id: str) -> str:
    """Write the promoted version's artifact digest (with its run's code revision and data
    fingerprint) to ml.model_promotions; return the digest."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="crm-model-") as tmp:
        digest = artifact_digest(_download(name, version, Path(tmp)))
    params = MlflowClient().get_run(run_id).data.params if run_id else {}
    with db.connect(url) as conn:
        conn.execute(
            "insert into ml.model_promotions (model_name, version, run_id, artifact_digest,"
            " code_version, data_fingerprint) values (%s, %s, %s, %s, %s, %s)"
            " on conflict (model_name, version) do update set run_id = excluded.run_id,"
            " artifact_digest = excluded.artifact_digest, code_version = excluded.code_version,"
            " data_fingerprint = excluded.data_fingerprint, promoted_at = now()",
            (name, version, run_id, digest, params.get("code_version"),
             params.get("data_fingerprint")),
        )  # fmt: skip
    return digest


def log_and_register(
    task: str,
    model: Any,
    value: float,
    decision: tuple[bool, str] | None,
    url: str | None = None,
) -> Registered:
    """Log ``model`` in the active run, register it, and move ``champion`` to it when
    ``decision`` says it beat the current champion on the same held-out data (``value``: its
    deciding metric there; ``decision`` None: there is
    no champion yet), recording the promoted version's artifact digest in ``url``'s
    ml.model_promotions first. The version is tagged with what it is (``kind``: the model, or
    a baseline served because the model lost to it)."""
    import mlflow
    from mlflow import MlflowClient

    name = model_name(task)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=_pyfunc_class()(model), pip_requirements=["shop-crm"],
        registered_model_name=name,
    )  # fmt: skip
    client = MlflowClient()
    version = str(info.registered_model_version)
    promote, reason = decision or (True, "no champion yet")
    run = mlflow.active_run()
    if promote:
        record_promotion(url, name, version, run.info.run_id if run else "")
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "heldout_metric", model.key_metric)
    client.set_model_version_tag(name, version, "heldout_value", f"{value:.6f}")
    client.set_model_version_tag(name, version, "kind", model.kind)
    mlflow.set_tag("promoted", str(promote).lower())
    mlflow.set_tag("promotion_reason", reason)
    return Registered(name, version, run.info.run_id if run else "", promote, reason)


def champion_version(task: str) -> str | None:
    """The version ``models:/crm_<task>@champion`` points at, or None before any training."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name(task), CHAMPION).version)
    except MlflowException:
        return None


def load_champion(task: str, url: str | None = None) -> tuple[Any, str] | None:
    """(model, version) behind ``models:/crm_<task>@champion``, or None before any training.

    The version's artifacts are downloaded once, their digest checked against what the
    training job recorded in ``url``'s ml.model_promotions, and only then unpickled, from
    that same download: UntrustedChampion otherwise, naming the version."""
    import mlflow

    name = model_name(task)
    version = champion_version(task)
    if version is None:
        return None
    with db.connect(url) as conn:
        row = conn.execute(
            "select artifact_digest from ml.model_promotions where model_name = %s"
            " and version = %s",
            (name, version),
        ).fetchone()
    if row is None:
        raise UntrustedChampion(
            f"{name} version {version} carries the alias '{CHAMPION}' but the training job "
            "never promoted it (no row in ml.model_promotions): it is not loaded. Someone "
            "else moved the alias on the MLflow server: move it back to a version "
            "train_models promoted, or run train_models."
        )
    with tempfile.TemporaryDirectory(prefix="crm-model-") as tmp:
        local = _download(name, version, Path(tmp))
        if artifact_digest(local) != row[0]:
            raise UntrustedChampion(
                f"{name} version {version}: its artifacts changed since the training job "
                "promoted it (the digest in ml.model_promotions differs): it is not loaded. "
                "Move the alias to a version train_models promoted, or run train_models."
            )
        loaded = mlflow.pyfunc.load_model(str(local))
    return loaded.unwrap_python_model().model, version
