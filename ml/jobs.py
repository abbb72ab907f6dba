"""The ML jobs the ``crm`` CLI and the DAGs run: train (MLflow runs, registry, champion) and
score (champions -> ml.* tables and Redis).

Every task but segments has a baseline, fitted and evaluated on the same held-out split as the
model: recency for churn, the single best global hour for send time, popularity for
recommendations. The model is the candidate only when it beats its baseline (for churn: a
higher AUC and a calibration error within CALIBRATION_LIMIT, or the baseline's if that is
larger); otherwise the baseline is, so the task serves the baseline's scores, labelled as such
(``kind``), until a model beats it. The candidate becomes champion when it beats the current
champion on the same split by the same rule."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from crm.errors import CrmError
from crm.settings import PROJECT_ROOT, Settings, get_settings
from ml import tracking
from ml.churn import ChurnModel, RecencyChurn
from ml.data import NotEnoughHistory, Snapshot, load_snapshot
from ml.recommend.ranker import Popular, Recommender
from ml.segments import SegmentModel
from ml.sendtime import GlobalHour, SendTimeModel
from ml.value import BTYD, CustomerValue

TASKS = ("segments", "churn", "send_time", "recommendations", "value")
DAY = pd.Timedelta(days=1)
CALIBRATION_LIMIT = 0.05  # the largest calibration error a churn model is served with
log = logging.getLogger(__name__)


class NoChampionError(CrmError):
    """Scoring needs a champion for every task: run `crm train` (or the train_models DAG)."""


@dataclass
class TrainParams:
    churn_window_days: int = 14
    recommendation_horizon_days: int = 7
    send_time_holdout_days: int = 14
    recommendations: int = 20
    value_holdout_days: int = 28
    seed: int = 0
    # how much a model's deciding metric must exceed its baseline's for the model to be served
    baseline_margin: float = 0.0


@dataclass
class TaskResult:
    task: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    key_metric: str = ""  # the metric that decides the champion
    serves: str = "model"  # "model", or "baseline: ..." when the model lost to its baseline


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
    elif task == "value":
        t = tables["by_frequency"]
        ax.plot(t.x, t.actual, "o-", label="actual")
        ax.plot(t.x, t.predicted, "s--", label="predicted")
        ax.set(xlabel="repeat orders before the cut-off (7+ pooled)",
               ylabel="mean orders after it", title="Held-out orders by frequency")  # fmt: skip
        ax.legend()
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
    if task == "value":
        cut = end - p.value_holdout_days * DAY
        return CustomerValue(seed=p.seed).fit(snap, cut), cut
    cut = end - p.recommendation_horizon_days * DAY
    model = Recommender(
        horizon_days=p.recommendation_horizon_days, n=p.recommendations, seed=p.seed
    )
    return model.fit(snap.before(cut)), cut


def _baseline(task: str, snap: Snapshot, p: TrainParams, cut: pd.Timestamp | None) -> Any:
    """The task's baseline, fitted on the same training data as the model (None: segments)."""
    if cut is None:
        return None
    if task == "churn":
        return RecencyChurn(window_days=p.churn_window_days, seed=p.seed).fit(snap, cut)
    if task == "send_time":
        return GlobalHour().fit(snap.before(cut))
    if task == "value":
        return CustomerValue(model=BTYD(), seed=p.seed).fit(snap, cut)
    model = Popular(horizon_days=p.recommendation_horizon_days, n=p.recommendations)
    return model.fit(snap.before(cut))


def beats(task: str, key: str, ours: dict[str, float], other: dict[str, float],
          margin: float = 0.0, whose: str = "") -> tuple[bool, str]:  # fmt: skip
    """Whether ``ours`` beats ``other`` on the same held-out split, and why (or why not);
    ``whose`` names the other in the reason ("champion's ")."""
    value, against = ours[key], other[key]
    if not value > against + margin:
        more = f" + {margin:g}" if margin else ""
        return False, f"{key} {value:.4f} <= {whose}{against:.4f}{more}"
    if task == "churn":
        limit = max(CALIBRATION_LIMIT, other.get("calibration_error", 0.0))
        if ours["calibration_error"] > limit:
            return False, f"calibration error {ours['calibration_error']:.4f} > {limit:.4f}"
    return True, f"{key} {value:.4f} > {whose}{against:.4f}"


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
            baseline = _baseline(task, snap, p, cut)
            lost = ""
            if baseline is not None:
                base_metrics, base_tables = _evaluate(task, baseline, snap, cut)
                mlflow.log_metrics({f"baseline_{k}".replace("@", "_at_"): v
                                    for k, v in base_metrics.items()})  # fmt: skip
                won, why = beats(task, model.key_metric, metrics, base_metrics, p.baseline_margin)
                if not won:
                    lost = f"the model lost to the {baseline.kind}: {why}"
                    log.warning("%s: %s; the baseline is the candidate", task, lost)
                    model, tables = baseline, base_tables
                    # the baseline's own figures, with the model's kept beside them
                    metrics = {**base_metrics, **{f"model_{k}": v for k, v in metrics.items()
                                                  if k in base_metrics}}  # fmt: skip
            mlflow.set_tag("serves", model.kind)
            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
            for name, table in tables.items():
                mlflow.log_table(table, artifact_file=f"{name}.json")
            mlflow.log_figure(_plot(task, tables), f"{task}.png")
            decision = None
            if champion is not None:
                try:
                    held = _evaluate(task, champion, snap, cut)[0]
                    mlflow.log_metric(
                        "champion_" + model.key_metric.replace("@", "_at_"), held[model.key_metric]
                    )
                    decision = beats(task, model.key_metric, metrics, held, whose="champion's ")
                except Exception as exc:  # an old champion that cannot score today's data loses
                    log.warning("champion of %s could not be evaluated: %s", task, exc)
                    decision = (True, f"the champion could not be evaluated: {exc}")
            reg = tracking.log_and_register(task, model, metrics[model.key_metric], decision, url)
            reason = f"{lost}; {reg.reason}" if lost else reg.reason
            results.append(TaskResult(task, reg.version, reg.promoted, reason, metrics,
                                      model.key_metric, model.kind))  # fmt: skip
    return results


def _campaign_horizons() -> set[int]:
    """The value horizons the campaign files filter on (none when they do not load: the
    campaign checks report that, and scoring goes on)."""
    from notify.campaigns import CampaignError, load_campaigns, value_horizons
    from notify.run import CAMPAIGNS

    try:
        return value_horizons(load_campaigns(CAMPAIGNS))
    except (CampaignError, OSError) as exc:
        log.warning("campaign files not read for value horizons: %s", exc)
        return set()


def score(
    settings: Settings | None = None,
    snapshot: Snapshot | None = None,
    shards: int | None = None,
    workers: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    """Score every customer with each task's champion; publish to ml.* and Redis: a scoring
    job in shards (``ml.shards``), in this process or ``workers`` processes; ``snapshot``:
    that data, as one shard."""
    from ml import shards as sharded

    return sharded.run(settings, shards, workers, snapshot, progress)
