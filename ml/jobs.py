"""The ML jobs the ``crm`` CLI and the DAGs run: train (MLflow runs, registry, champion) and
score (champions -> ml.* tables and Redis)."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from crm.errors import CrmError
from crm.settings import PROJECT_ROOT, Settings, get_settings
from ml import tracking
from ml.churn import ChurnModel
from ml.data import NotEnoughHistory, Snapshot, load_snapshot
from ml.recommend.ranker import Recommender
from ml.segments import SegmentModel
from ml.sendtime import SendTimeModel

TASKS = ("segments", "churn", "send_time", "recommendations")
DAY = pd.Timedelta(days=1)
log = logging.getLogger(__name__)


class NoChampionError(CrmError):
    """Scoring needs a champion for every task: run `crm train` (or the train_models DAG)."""


@dataclass
class TrainParams:
    churn_window_days: int = 14
    recommendation_horizon_days: int = 7
    send_time_holdout_days: int = 14
    recommendations: int = 20
    seed: int = 0


@dataclass
class TaskResult:
    task: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    key_metric: str = ""  # the metric that decides the champion


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _plot(task: str, tables: dict[str, pd.DataFrame]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if task == "churn":
        t = tables["calibration"]
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.plot(t.predicted, t.observed, "o-")
        ax.set(xlabel="predicted churn probability", ylabel="observed churn rate",
               title="Calibration (held out)")  # fmt: skip
    elif task == "send_time":
        t = tables["global_profile"]
        ax.bar(t.hour, t.global_profile)
        ax.set(xlabel="local hour", ylabel="share of engagement", title="Global profile")
    elif task == "recommendations":
        t = tables["comparison"].set_index("model")[["ndcg@10", "recall@20", "map@10"]]
        t.plot.bar(ax=ax, rot=0)
        ax.set(title="Held-out ranking quality")
    else:
        t = tables["segments"]
        ax.barh(t.segment_name, t.get("customers", pd.Series([1] * len(t))))
        ax.set(title="Segments")
    fig.tight_layout()
    return fig


def _challenger(
    task: str, snap: Snapshot, p: TrainParams, champion: Any
) -> tuple[Any, pd.Timestamp | None]:
    end = snap.end
    if task == "segments":
        return SegmentModel(seed=p.seed).fit(snap, previous=champion), None
    if task == "churn":
        cut = end - p.churn_window_days * DAY
        return ChurnModel(window_days=p.churn_window_days, seed=p.seed).fit(snap, cut), cut
    if task == "send_time":
        cut = end - p.send_time_holdout_days * DAY
        return SendTimeModel().fit(snap.before(cut)), cut
    cut = end - p.recommendation_horizon_days * DAY
    model = Recommender(
        horizon_days=p.recommendation_horizon_days, n=p.recommendations, seed=p.seed
    )
    return model.fit(snap.before(cut)), cut


def _evaluate(
    task: str, model: Any, snap: Snapshot, cut: pd.Timestamp | None
) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    return model.evaluate(snap) if cut is None else model.evaluate(snap, cut)


def train(
    tasks: tuple[str, ...] = TASKS,
    params: TrainParams | None = None,
    settings: Settings | None = None,
    snapshot: Snapshot | None = None,
) -> list[TaskResult]:
    """Train each task as an MLflow run; register it; promote it if it beats the champion."""
    import mlflow

    settings = settings or get_settings()
    p = params or TrainParams()
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise CrmError(f"unknown task(s) {sorted(unknown)}; choose from {list(TASKS)}")
    url = settings.database_url and str(settings.database_url)
    snap = snapshot or load_snapshot(url)
    tracking.setup(settings, "train")
    results = []
    for task in tasks:
        current = tracking.load_champion(task, url)
        champion = current[0] if current else None
        with mlflow.start_run(run_name=f"{task} {snap.end:%Y-%m-%d}"):
            mlflow.log_params(
                {
                    **asdict(p),
                    "task": task,
                    "data_fingerprint": snap.fingerprint(),
                    "data_end": str(snap.end),
                    "code_version": code_version(),
                }
            )
            mlflow.set_tag("task", task)
            try:
                model, cut = _challenger(task, snap, p, champion)
            except NotEnoughHistory as exc:
                log.warning("%s not trained: %s", task, exc)
                mlflow.set_tag("skipped", str(exc))
                results.append(TaskResult(task, "-", False, f"skipped: {exc}"))
                continue
            if cut is not None:
                mlflow.log_param("heldout_from", str(cut))
            metrics, tables = _evaluate(task, model, snap, cut)
            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
            for name, table in tables.items():
                mlflow.log_table(table, artifact_file=f"{name}.json")
            mlflow.log_figure(_plot(task, tables), f"{task}.png")
            champion_value = None
            if champion is not None:
                try:
                    champion_value = _evaluate(task, champion, snap, cut)[0][model.key_metric]
                    mlflow.log_metric(
                        "champion_" + model.key_metric.replace("@", "_at_"), champion_value
                    )
                except Exception as exc:  # an old champion that cannot score today's data loses
                    log.warning("champion of %s could not be evaluated: %s", task, exc)
                    champion_value = float("-inf")
            reg = tracking.log_and_register(task, model, model.key_metric,
                                            metrics[model.key_metric], champion_value,
                                            url)  # fmt: skip
            results.append(
                TaskResult(task, reg.version, reg.promoted, reg.reason, metrics, model.key_metric)
            )
    return results


def score(settings: Settings | None = None, snapshot: Snapshot | None = None) -> dict[str, Any]:
    """Score every customer with each task's champion; publish to ml.* and Redis."""
    from ml import publish

    settings = settings or get_settings()
    url = settings.database_url and str(settings.database_url)
    snap = snapshot or load_snapshot(url)
    tracking.setup(settings, "score")
    champions = {}
    for task in TASKS:
        found = tracking.load_champion(task, url)
        if found is None:
            raise NoChampionError(
                f"no champion for {tracking.model_name(task)}: run `crm train` (or trigger the "
                "train_models DAG) first"
            )
        champions[task] = found
    segments_model, _seg_v = champions["segments"]
    segs = segments_model.assign(snap)
    catalog = segments_model.catalog()
    catalog["customers"] = (
        catalog.segment_id.map(segs.segment_id.value_counts()).fillna(0).astype(int)
    )
    frames = {
        "customer_segments": segs,
        "segment_catalog": catalog,
        "churn_scores": champions["churn"][0].score(snap),
        "send_times": champions["send_time"][0].score(snap),
        "recommendations": champions["recommendations"][0].score(snap),
    }
    task_of = {"customer_segments": "segments", "segment_catalog": "segments",
               "churn_scores": "churn", "send_times": "send_time",
               "recommendations": "recommendations"}  # fmt: skip
    versions = {
        t: (task_of[t], tracking.model_name(task_of[t]), champions[task_of[t]][1]) for t in frames
    }
    from crm import db

    scored_at = db.clock(url)
    counts = publish.replace_tables(frames, versions, scored_at, url)
    models = {t: f"{tracking.model_name(t)}/{v}" for t, (_, v) in champions.items()}
    meta = {"scored_at": scored_at.isoformat(), "models": models}
    popular = getattr(champions["recommendations"][0], "popular_items", [])  # set by score()
    keys = publish.publish_redis(frames, meta, settings, popular=popular)
    return {"rows": counts, "redis_keys": keys, **meta}
