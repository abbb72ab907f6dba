"""Churn risk: will this customer do nothing (no session, no order) in the next window?

LightGBM on features as of a cut-off, trained on several earlier cut-offs (a time split: the
label window of a training cut-off always ends before the evaluation cut-off), calibrated on
the latest of them so a score of 0.3 means about 30 in 100 such customers churn: a young shop's
churn rate grows with its age, and calibration pooled over every cut-off lagged it (customers
given 0.55 churned at 0.84 on the demo's shop). Calibration is Platt scaling of out-of-fold
scores of the latest cut-off's customers: monotone, so it keeps the ranking (AUC) as it is.

The baseline, ``RecencyChurn``, is the days since the last session, calibrated the same way
(isotonic): the model is served only when it beats it (``ml.jobs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.calibration import CalibratedClassifierCV, calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ml.data import NotEnoughHistory, Snapshot, isin

DAY = pd.Timedelta(days=1)
FEATURES = [
    "recency_days",
    "tenure_days",
    "sessions_7d",
    "sessions_30d",
    "sessions_90d",
    "active_days_30d",
    "orders_30d",
    "orders_total",
    "revenue_total",
    "days_since_order",
    "product_views_30d",
    "messages_engaged_30d",
    "messages_received_30d",
    "session_trend",
    "mean_gap_days",
]
BANDS = [(0.0, "low"), (0.3, "medium"), (0.6, "high")]
CALIBRATION_FOLDS = 3


def features_asof(
    snap: Snapshot, cutoff: pd.Timestamp, active_within_days: int = 90
) -> pd.DataFrame:
    """One row per customer active in the ``active_within_days`` before ``cutoff``; only
    events before the cut-off are used."""
    past = snap.before(cutoff)
    s = past.sessions
    recent = s[s.started_at >= cutoff - active_within_days * DAY]
    ids = pd.Index(recent.customer_id.unique(), name="customer_id")
    out = pd.DataFrame(index=ids)
    if not len(ids):
        return out.assign(**{f: [] for f in FEATURES})
    g = s[isin(s.customer_id, ids)].groupby("customer_id")
    days_ago = (cutoff - s.started_at) / DAY
    s = s.assign(days_ago=days_ago)
    out["recency_days"] = g.started_at.max().rsub(cutoff) / DAY
    out["tenure_days"] = g.started_at.min().rsub(cutoff) / DAY
    for w in (7, 30, 90):
        out[f"sessions_{w}d"] = s[s.days_ago <= w].groupby("customer_id").size()
    out["active_days_30d"] = (
        s[s.days_ago <= 30]
        .assign(d=lambda x: x.started_at.dt.floor("D"))
        .groupby("customer_id")
        .d.nunique()
    )
    o = past.orders
    out["orders_30d"] = o[(cutoff - o.ordered_at) / DAY <= 30].groupby("customer_id").size()
    out["orders_total"] = o.groupby("customer_id").size()
    out["revenue_total"] = o.groupby("customer_id").revenue.sum()
    out["days_since_order"] = o.groupby("customer_id").ordered_at.max().rsub(cutoff) / DAY
    pe = past.product_events
    out["product_views_30d"] = pe[(cutoff - pe.event_at) / DAY <= 30].groupby("customer_id").size()
    m = past.messages
    m30 = m[(cutoff - m.event_at) / DAY <= 30]
    out["messages_engaged_30d"] = m30[m30.engaged].groupby("customer_id").size()
    out["messages_received_30d"] = (
        m30[m30.engagement.isin(["received", "delivered"])].groupby("customer_id").size()
    )
    out = out.fillna({c: 0 for c in FEATURES if c not in ("days_since_order",)})
    out["days_since_order"] = out["days_since_order"].fillna(999.0)
    out["session_trend"] = (out.sessions_7d / 7) / ((out.sessions_30d + 1) / 30)
    # the mean gap between consecutive sessions: (last - first) / (sessions - 1)
    n = g.size()
    span = (g.started_at.max() - g.started_at.min()) / DAY
    out["mean_gap_days"] = (span / (n - 1)).where(n > 1, 60.0)
    return out[FEATURES].astype("float64")


def labels(
    snap: Snapshot, customers: pd.Index, cutoff: pd.Timestamp, window_days: int
) -> pd.Series:
    """1 = churned: no session and no order in [cutoff, cutoff + window)."""
    later = snap.between(cutoff, cutoff + window_days * DAY)
    active = set(later.sessions.customer_id) | set(later.orders.customer_id)
    return pd.Series([0 if c in active else 1 for c in customers], index=customers, name="churned")


def training_frame(
    snap: Snapshot,
    last_cutoff: pd.Timestamp,
    window_days: int,
    n_cutoffs: int = 4,
    step_days: int = 7,
) -> pd.DataFrame:
    """Features and labels stacked over ``n_cutoffs`` cut-offs ending at ``last_cutoff``."""
    frames = []
    for k in range(n_cutoffs):
        cut = last_cutoff - k * step_days * DAY
        x = features_asof(snap, cut)
        if len(x):
            frames.append(x.assign(churned=labels(snap, x.index, cut, window_days), cutoff=cut))
    return pd.concat(frames) if frames else pd.DataFrame(columns=[*FEATURES, "churned", "cutoff"])


def band(p: float) -> str:
    return [name for lo, name in BANDS if p >= lo][-1]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _fold(ids: pd.Index, folds: int) -> np.ndarray:
    """A stable fold per customer (every cut-off's row of a customer in the same fold)."""
    return pd.util.hash_array(ids.astype(str).to_numpy()) % folds


@dataclass
class ChurnModel:
    """LightGBM churn classifier, Platt-calibrated on the latest training cut-off."""

    window_days: int = 14
    seed: int = 0
    params: dict[str, object] = field(
        default_factory=lambda: {
            "n_estimators": 200,
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_child_samples": 20,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
        }
    )
    booster: LGBMClassifier | None = None
    calibration: tuple[float, float] = (1.0, 0.0)  # logit(p) = a * logit(raw) + b
    model: CalibratedClassifierCV | None = None  # versions before the latest-cut-off calibration

    task = "churn"
    key_metric = "auc"
    kind = "model"

    def _booster(self) -> LGBMClassifier:
        return LGBMClassifier(random_state=self.seed, verbose=-1, **self.params)  # type: ignore[arg-type]

    def fit(self, snap: Snapshot, evaluation_cutoff: pd.Timestamp) -> ChurnModel:
        """Train on cut-offs whose label windows end by ``evaluation_cutoff``; calibrate on the
        latest of them, from boosters that did not see those customers."""
        last = evaluation_cutoff - self.window_days * DAY
        train = training_frame(snap.before(evaluation_cutoff), last, self.window_days)
        if train.churned.nunique() < 2:
            raise NotEnoughHistory(
                "churn: every training customer has the same label; load more days of history"
            )
        x, y = train[FEATURES], train.churned.astype(int).to_numpy()
        fold = _fold(train.index, CALIBRATION_FOLDS)
        latest = (train.cutoff == train.cutoff.max()).to_numpy()
        raw = np.full(len(train), np.nan)
        for k in range(CALIBRATION_FOLDS):
            rest, held = fold != k, (fold == k) & latest
            if held.any() and len(np.unique(y[rest])) == 2:
                fitted = self._booster().fit(x[rest], y[rest])
                raw[held] = np.asarray(fitted.predict_proba(x[held]))[:, 1]
        self.booster = self._booster().fit(x, y)
        known = latest & ~np.isnan(raw)
        if len(np.unique(y[known])) == 2:
            platt = LogisticRegression(C=1e6).fit(_logit(raw[known])[:, None], y[known])
            self.calibration = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
        return self

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        if self.booster is None:
            assert self.model is not None, "fit first"
            return self.model.predict_proba(x[FEATURES])[:, 1]
        a, b = self.calibration
        raw = np.asarray(self.booster.predict_proba(x[FEATURES]))[:, 1]
        return 1 / (1 + np.exp(-(a * _logit(raw) + b)))

    def score(self, snap: Snapshot, cutoff: pd.Timestamp | None = None) -> pd.DataFrame:
        cut = cutoff or snap.end
        x = features_asof(snap, cut)
        p = self.predict(x) if len(x) else np.array([])
        return pd.DataFrame(
            {
                "customer_id": x.index,
                "churn_probability": p.round(4),
                "risk_band": [band(v) for v in p],
            }
        )

    def evaluate(
        self, snap: Snapshot, cutoff: pd.Timestamp
    ) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
        """Held-out metrics at ``cutoff`` (features before it, labels in the window after it),
        with the recency baseline (score = days since last session) on the same customers."""
        x = features_asof(snap, cutoff)
        y = labels(snap, x.index, cutoff, self.window_days)
        if y.nunique() < 2:
            raise NotEnoughHistory(f"churn: one class only among customers held out at {cutoff}")
        p = self.predict(x)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
        metrics = {
            "auc": float(roc_auc_score(y, p)),
            "auc_recency_baseline": float(roc_auc_score(y, x.recency_days)),
            "brier": float(brier_score_loss(y, p)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6))),
            "calibration_error": float(np.mean(np.abs(prob_true - prob_pred))),
            "base_rate": float(y.mean()),
            "customers": float(len(y)),
        }
        tables = {
            "calibration": pd.DataFrame({"predicted": prob_pred, "observed": prob_true}),
        }
        return metrics, tables


@dataclass
class RecencyChurn(ChurnModel):
    """The baseline: days since the last session, as a churn probability by isotonic
    regression on the latest cut-off whose window has ended."""

    recency: IsotonicRegression | None = None
    kind = "baseline: recency"

    def fit(self, snap: Snapshot, evaluation_cutoff: pd.Timestamp) -> RecencyChurn:
        last = evaluation_cutoff - self.window_days * DAY
        x = features_asof(snap.before(evaluation_cutoff), last)
        y = labels(snap.before(evaluation_cutoff), x.index, last, self.window_days)
        if y.nunique() < 2:
            raise NotEnoughHistory(f"churn: one class only among customers at {last}")
        self.recency = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
        self.recency.fit(x.recency_days, y)
        return self

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        assert self.recency is not None, "fit first"
        return np.asarray(self.recency.predict(x.recency_days.to_numpy()), dtype=float)
