"""Repeat purchasing on transaction logs (CDNOW): our gradient-boosted models against BG/NBD.

Both see the same calibration period. BG/NBD fits its four parameters there. Ours trains on
an inner time split of the same period (features at ``inner``, labels in [inner, cal_end)),
then predicts from features at ``cal_end``. Counts are extrapolated from the inner horizon h to
the holdout horizon H as (H / h) ** beta, where beta is measured in the calibration period (how
purchases in 2h compare with purchases in h from an earlier cut-off: below 1 when customers
die out), so no information from the holdout is used.

Errors in predicted counts: both models forecast the *expected* number of purchases, and the
proper scores for an expected count are squared error and Poisson deviance. Absolute error is
minimised by the median, which for these skewed counts (most customers buy nothing again) is
far below the mean: halving either forecast lowers its MAE, so ``compare_on_cdnow`` reports
MAE, and BG/NBD's MAE at half its forecast, to show that, not to rank the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.metrics import mean_poisson_deviance, roc_auc_score

from ml.btyd import BGNBD

WEEK = pd.Timedelta(days=7)
# the standard split: 39 weeks of calibration from 1997-01-01, 39 weeks of holdout
CDNOW_CALIBRATION_END = pd.Timestamp("1997-10-01")
CDNOW_END = pd.Timestamp("1998-07-01")
FEATURES = ["x", "t_x", "T", "recency", "mean_value", "first_value", "last_value",
            "units", "x_last_13w", "x_last_4w", "mean_gap"]  # fmt: skip


def read_cdnow(path: str) -> pd.DataFrame:
    """CDNOW_master.txt -> (customer_id, date, value, units), one row per customer and day."""
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str})
    raw["date"] = pd.to_datetime(raw.date.astype(str), format="%Y%m%d")
    out = raw.groupby(["customer_id", "date"], as_index=False).agg(
        value=("dollar_value", "sum"), units=("number_of_cds", "sum")
    )
    return out


def rfm(tx: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Features of every customer whose first purchase is before ``cutoff``, from purchases
    before it (x = repeat purchase days, times in weeks since the first purchase)."""
    past = tx[tx.date < cutoff].sort_values("date")
    if past.empty:
        return pd.DataFrame(columns=FEATURES, dtype=float)
    g = past.groupby("customer_id")
    first = g.date.min()
    weeks = (past.date - past.customer_id.map(first)) / WEEK
    past = past.assign(w=weeks)
    g = past.groupby("customer_id")
    out = pd.DataFrame({"x": g.size() - 1, "t_x": g.w.max(), "T": (cutoff - first) / WEEK})
    out["recency"] = out["T"] - out.t_x
    out["mean_value"] = g.value.mean()
    out["first_value"] = g.value.first()
    out["last_value"] = g.value.last()
    out["units"] = g.units.sum()
    age = (cutoff - past.date) / WEEK
    out["x_last_13w"] = past[age <= 13].groupby("customer_id").size().reindex(out.index).fillna(0)
    out["x_last_4w"] = past[age <= 4].groupby("customer_id").size().reindex(out.index).fillna(0)
    out["mean_gap"] = np.where(out.x > 0, out.t_x / out.x.clip(lower=1), out["T"])
    return out[FEATURES].astype(float)


def future_counts(
    tx: pd.DataFrame, ids: pd.Index, start: pd.Timestamp, end: pd.Timestamp
) -> pd.Series:
    window = tx[(tx.date >= start) & (tx.date < end)]
    return window.groupby("customer_id").size().reindex(ids).fillna(0)


@dataclass
class RepeatModel:
    seed: int = 0
    clf: LGBMClassifier | None = None
    reg: LGBMRegressor | None = None
    horizon_weeks: float = 13.0
    beta: float = 1.0  # growth exponent of expected purchases with the horizon

    def fit(self, tx: pd.DataFrame, inner: pd.Timestamp, cal_end: pd.Timestamp) -> RepeatModel:
        x = rfm(tx, inner)
        y = future_counts(tx, x.index, inner, cal_end)
        self.horizon_weeks = (cal_end - inner) / WEEK
        params = {"n_estimators": 300, "learning_rate": 0.03, "num_leaves": 15,
                  "min_child_samples": 40, "random_state": self.seed, "verbose": -1}  # fmt: skip
        self.clf = LGBMClassifier(**params).fit(x, (y > 0).astype(int))  # type: ignore[arg-type]
        self.reg = LGBMRegressor(objective="poisson", **params).fit(x, y)  # type: ignore[arg-type]
        early = inner - (cal_end - inner)
        ids = rfm(tx, early).index
        if len(ids):
            short = future_counts(tx, ids, early, inner).sum()
            long = future_counts(tx, ids, early, cal_end).sum()
            if short > 0 and long > short:
                self.beta = float(np.log(long / short) / np.log(2))
        return self

    def predict(self, x: pd.DataFrame, horizon_weeks: float) -> tuple[np.ndarray, np.ndarray]:
        assert self.clf is not None and self.reg is not None
        p = np.asarray(self.clf.predict_proba(x[FEATURES]))[:, 1]
        n = self.reg.predict(x[FEATURES]) * (horizon_weeks / self.horizon_weeks) ** self.beta
        return p, n


def compare_on_cdnow(
    tx: pd.DataFrame,
    cal_end: pd.Timestamp = CDNOW_CALIBRATION_END,
    end: pd.Timestamp = CDNOW_END,
    inner_weeks: float = 13,
) -> dict[str, float]:
    """AUC for 'buys again in the holdout' and error in predicted repeat transactions, ours
    against BG/NBD, on the standard 39-week calibration / 39-week holdout split."""
    x = rfm(tx, cal_end)
    actual = future_counts(tx, x.index, cal_end, end)
    horizon = (end - cal_end) / WEEK
    bg = BGNBD().fit(x.x.to_numpy(), x.t_x.to_numpy(), x["T"].to_numpy())
    bg_n = bg.expected(horizon, x.x.to_numpy(), x.t_x.to_numpy(), x["T"].to_numpy())
    ours = RepeatModel().fit(tx, cal_end - inner_weeks * WEEK, cal_end)
    p, n = ours.predict(x, horizon)
    buys = (actual > 0).astype(int)

    def deviance(pred: np.ndarray) -> float:
        return float(mean_poisson_deviance(actual, np.maximum(pred, 1e-9)))

    return {
        "customers": float(len(x)),
        "horizon_exponent_beta": ours.beta,
        "holdout_repeat_transactions": float(actual.sum()),
        "bgnbd_r": bg.r, "bgnbd_alpha": bg.alpha, "bgnbd_a": bg.a, "bgnbd_b": bg.b,
        "auc_ours": float(roc_auc_score(buys, p)),
        "auc_bgnbd": float(roc_auc_score(buys, bg_n)),
        "mae_ours": float(np.abs(n - actual).mean()),
        "mae_bgnbd": float(np.abs(bg_n - actual).mean()),
        "mae_bgnbd_halved": float(np.abs(bg_n / 2 - actual).mean()),
        "poisson_deviance_ours": deviance(n),
        "poisson_deviance_bgnbd": deviance(bg_n),
        "rmse_ours": float(np.sqrt(((n - actual) ** 2).mean())),
        "rmse_bgnbd": float(np.sqrt(((bg_n - actual) ** 2).mean())),
        "total_predicted_ours": float(n.sum()),
        "total_predicted_bgnbd": float(bg_n.sum()),
    }  # fmt: skip
