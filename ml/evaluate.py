"""``crm evaluate``: a time-split offline evaluation of every model, written as a markdown
report with plots and a metrics.json, so a reader can reproduce each figure.

Sections: the project's own data (the marts: churn, send time, segments, recommendations, each
against its baseline; segments against planted archetypes when the simulator's ground truth is
given), CDNOW (customer value against BG/NBD + Gamma-Gamma over calibration lengths) and
MovieLens 100K (the recommender against popularity and ALS) when ../shared/data has them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import adjusted_rand_score

from ml.churn import ChurnModel
from ml.data import NotEnoughHistory, Snapshot
from ml.datasets import movielens_snapshot
from ml.recommend.candidates import holdout_latest
from ml.recommend.ranker import Recommender, comparison_metrics
from ml.segments import SegmentModel
from ml.sendtime import SendTimeModel
from ml.value import BTYD, WEEK, CustomerValue, read_cdnow
from ml.value import compare as value_compare

DAY = pd.Timedelta(days=1)
TARGETS = {
    "recommendations": "NDCG@10 >= 1.5x popularity and above ALS",
    "churn": "AUC above the recency baseline, calibration error <= 0.05",
    "value": "at every calibration length, Poisson deviance, RMSE of transactions and of "
    "spend no worse than BG/NBD + Gamma-Gamma, AUC within 0.005",
    "send_time": "hit rate >= 1.5x the global hour",
    "segments": "adjusted Rand index >= 0.6",
}


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(fig: Any, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=110)
    return f"![{name}]({name})"


def evaluate_project(
    snap: Snapshot, truth: pd.DataFrame | None, out: Path
) -> tuple[dict[str, Any], list[str]]:
    from ml.jobs import _plot

    md, metrics = ["## The shop's own data (marts)", f"Data up to {snap.end:%Y-%m-%d}; "
                   f"{len(snap.customers):,} customers, {len(snap.sessions):,} sessions, "
                   f"{len(snap.product_events):,} product events."], {}  # fmt: skip
    cut = snap.end - 14 * DAY
    churn = ChurnModel(window_days=14).fit(snap, cut)
    m, t = churn.evaluate(snap, cut)
    metrics["churn"] = m
    md += ["### Churn risk (14-day window)",
           f"Held out from {cut:%Y-%m-%d}: AUC **{m['auc']:.3f}** (recency baseline "
           f"{m['auc_recency_baseline']:.3f}), Brier {m['brier']:.3f}, calibration error "
           f"{m['calibration_error']:.3f}, base rate {m['base_rate']:.2f}.",
           _save(_plot("churn", t), out, "churn_calibration.png")]  # fmt: skip
    send = SendTimeModel().fit(snap.before(cut))
    m, t = send.evaluate(snap, cut)
    metrics["send_time"] = m
    md += ["### Best send time",
           f"Held-out engagements within ±1 h of the predicted local hour: **{m['hit_rate']:.3f}** "
           f"against {m['hit_rate_global_hour']:.3f} for the single best global hour "
           f"(**{m['lift_over_global']:.2f}x**; {int(m['heldout_engagements'])} engagements). "
           f"Target: {TARGETS['send_time']}.",
           _save(_plot("send_time", t), out, "send_time_profile.png")]  # fmt: skip
    metrics["value"], part = evaluate_value(snap, truth, out)
    md += part
    seg = SegmentModel().fit(snap)
    m, t = seg.evaluate(snap)
    assigned = seg.assign(snap).set_index("customer_id")
    t["segments"]["customers"] = t["segments"].segment_id.map(assigned.segment_id.value_counts())
    if truth is not None and "archetype" in truth:
        joined = assigned.join(truth.archetype, how="inner")
        m["adjusted_rand_index"] = float(adjusted_rand_score(joined.archetype, joined.segment_id))
    metrics["segments"] = m
    ari = (
        ", adjusted Rand index against the planted archetypes "
        f"**{m['adjusted_rand_index']:.3f}** (target 0.6)"
        if "adjusted_rand_index" in m
        else " (no ground truth given: pass --truth)"
    )
    md += ["### AI segments", f"k = {int(m['k'])} by silhouette ({m['silhouette']:.3f}){ari}.",
           _table(t["segments"][["segment_id", "segment_name", "customers",
                                 "description"]])]  # fmt: skip
    rcut = snap.end - 7 * DAY
    rec = Recommender(horizon_days=7).fit(snap.before(rcut))
    m, t = rec.evaluate(snap, rcut)
    metrics["recommendations"] = m
    md += ["### Recommendations (next 7 days)",
           f"Target: {TARGETS['recommendations']}.", _table(t["comparison"]),
           _save(_plot("recommendations", t), out, "recommendations.png")]  # fmt: skip
    return metrics, md


VALUE_HOLDOUT_DAYS = (14, 21, 28)


def evaluate_value(
    snap: Snapshot, truth: pd.DataFrame | None, out: Path
) -> tuple[dict[str, Any], list[str]]:
    """Customer value on the shop: the model against BG/NBD + Gamma-Gamma for several held-out
    lengths; with the simulator's truth, P(alive) against the customers it had churned."""
    import matplotlib
    from sklearn.metrics import roc_auc_score

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, results = [], {}
    plotted: tuple[int, dict[str, pd.DataFrame]] | None = None  # the longest hold-out's tables
    for days in VALUE_HOLDOUT_DAYS:
        cut = snap.end - days * DAY
        try:
            pair = {n: m.fit(snap, cut) for n, m in (("value model", CustomerValue()),
                    ("BG/NBD + Gamma-Gamma", CustomerValue(model=BTYD())))}  # fmt: skip
        except NotEnoughHistory:
            continue
        for name, model in pair.items():
            m, t = model.evaluate(snap, cut)
            if truth is not None and "churn_date" in truth:
                p = model.predict(snap, cut, days)
                churned = pd.to_datetime(truth.churn_date).reindex(p.index) < cut.tz_convert(None)
                known = churned.index.isin(truth.index)
                if 0 < churned[known].sum() < known.sum():
                    m["auc_p_alive_planted"] = float(roc_auc_score(~churned[known],
                                                                   p.p_alive[known]))  # fmt: skip
            results[f"{days}d {name}"] = m
            rows.append({"held out": f"{days} days", "model": name,
                         "Poisson deviance": m["poisson_deviance"], "RMSE orders": m["rmse"],
                         "RMSE spend": m["rmse_spend"], "AUC buys": m["auc"],
                         "AUC P(alive), planted churn": m.get("auc_p_alive_planted", float("nan")),
                         "orders predicted / actual": f"{m['predicted_orders']:,.0f} / "
                                                      f"{m['actual_orders']:,.0f}"})  # fmt: skip
            if plotted is None or plotted[0] != days:
                plotted = (days, {})
            plotted[1][name] = t["by_frequency"]
    md = ["### Customer value", "Fitted on orders before the cut-off, scored on the orders "
          "after it. Customers the simulator had churned by the cut-off are the planted truth "
          "for P(alive)."]  # fmt: skip
    if plotted is None:
        return results, [*md, "Skipped: too little order history."]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    days, tables = plotted
    first = next(iter(tables.values()))
    ax.plot(first.x, first.actual, "o-", label="actual")
    for name, t in tables.items():
        ax.plot(t.x, t.predicted, "--", label=name)
    ax.set(xlabel="repeat orders before the cut-off (7+ pooled)", ylabel="mean orders after",
           title=f"{days} days held out")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    return results, [*md, _table(pd.DataFrame(rows)), _save(fig, out, "value_by_frequency.png")]


CDNOW_START, CDNOW_END = pd.Timestamp("1997-01-01"), pd.Timestamp("1998-07-01")
CDNOW_WEEKS = (13, 20, 26, 32, 39, 45, 52)  # calibration lengths from 1997-01-01
SCORES = (("AUC buys again", "auc"), ("Poisson deviance", "poisson_deviance"),
          ("RMSE transactions", "rmse"), ("RMSE spend ($)", "rmse_spend"))  # fmt: skip


def evaluate_cdnow(
    path: Path, out: Path, weeks: tuple[int, ...] = CDNOW_WEEKS
) -> tuple[dict[str, Any], list[str]]:
    """The value model against BG/NBD + Gamma-Gamma at each calibration length (hold-out to
    the end of the log), and the BTYD diagnostic plot for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tx = read_cdnow(str(path))
    rows, results = [], {}
    fig, axes = plt.subplots(1, len(weeks), figsize=(2.6 * len(weeks), 3), sharey=True)
    for ax, w in zip(axes, weeks, strict=True):
        r, by_x = value_compare(tx, CDNOW_START + w * WEEK, CDNOW_END)
        results[f"{w}w"] = r
        for label, name in (("value model", "model"), ("BG/NBD + Gamma-Gamma", "btyd")):
            row: dict[str, Any] = {"calibration": f"{w} weeks", "model": label}
            row |= {title: r[f"{key}_{name}"] for title, key in SCORES}
            for what, unit in (("transactions", ""), ("spend", " ($)")):
                predicted, actual = r[f"predicted_{what}_{name}"], r[f"actual_{what}"]
                row[f"{what} predicted / actual{unit}"] = f"{predicted:,.0f} / {actual:,.0f}"
            rows.append(row)
        ax.plot(by_x.x, by_x.actual, "o-", label="actual")
        ax.plot(by_x.x, by_x.model, "s--", label="value model")
        ax.plot(by_x.x, by_x.btyd, "^:", label="BG/NBD")
        ax.set(title=f"{w} weeks", xlabel="repeat transactions, calibration")
    axes[0].set_ylabel("mean transactions, hold-out")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    first = next(iter(results.values()))
    md = ["## CDNOW: customer value against BG/NBD + Gamma-Gamma",
          f"{int(first['customers']):,} customers at the shortest calibration. Calibration from "
          "1997-01-01 for each length, hold-out to 1998-06-30; both models fitted on the "
          f"calibration period only. Target: {TARGETS['value']}. The value model's spend is "
          "Gamma-Gamma's spend per order times BG/NBD's orders, so on spend it ties.",
          _table(pd.DataFrame(rows)),
          "Mean hold-out transactions by calibration-period repeat transactions (7+ pooled):",
          _save(fig, out, "cdnow_value.png")]  # fmt: skip
    return results, md


MOVIELENS_CUTS_DAYS = (120, 105, 90, 75, 60, 45, 30)  # before the log's end; 30 days each
RATE_METRICS = ("ndcg@10", "recall@20", "map@10")


def pooled(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per model, the rate metrics of several splits averaged over every customer evaluated
    (weighted by each split's customers); coverage averaged over the splits."""
    frame = pd.concat(tables, ignore_index=True)
    out = frame.groupby("model", sort=False).apply(
        lambda g: pd.Series(
            {**{m: float((g[m] * g.users).sum() / g.users.sum()) for m in RATE_METRICS},
             "coverage@10": float(g["coverage@10"].mean()), "users": float(g.users.sum())}
        ),
        include_groups=False,
    )  # fmt: skip
    return out.reset_index().astype({"users": int})


def evaluate_movielens(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Two protocols: the time split serving faces (train before a cut-off, relevant = the
    next 30 days), pooled over seven cut-offs; and the per-customer split of the literature
    (each user's latest 20% held out, ``holdout_latest``)."""
    snap = movielens_snapshot(folder)
    tables = []
    for back in MOVIELENS_CUTS_DAYS:
        cut = snap.end - back * DAY
        rec = Recommender(horizon_days=30, exclude_seen=True, all_time_baselines=True)
        rec.fit(snap.before(cut))
        tables.append(rec.evaluate(snap, cut)[1]["comparison"])
    by_time = pooled(tables)
    history, heldout = holdout_latest(snap, 0.2)
    rec = Recommender(horizon_days=30, exclude_seen=True, protocol="latest",
                      all_time_baselines=True).fit(history)  # fmt: skip
    latest = rec.evaluate_latest(history, heldout)[1]["comparison"]
    time_metrics, latest_metrics = comparison_metrics(by_time), comparison_metrics(latest)

    def verdict(m: dict[str, float]) -> str:
        pop = max(m["popularity_ndcg@10"], m["popularity_all_time_ndcg@10"])
        als = max(m["als_ndcg@10"], m["als_all_time_ndcg@10"])
        return (f"NDCG@10 {m['ndcg@10']:.3f} = **{m['ndcg@10'] / pop:.2f}x** the better "
                f"popularity; the better ALS {als:.3f}.")  # fmt: skip

    first, last = (snap.end - d * DAY for d in (MOVIELENS_CUTS_DAYS[0], MOVIELENS_CUTS_DAYS[-1]))
    md = ["## MovieLens 100K: the recommender on a real log",
          "Ratings read as interactions; already-rated films excluded for every model. "
          f"Target: {TARGETS['recommendations']}.",
          "### Time split (what serving faces)",
          f"Train before a cut-off, relevant = what each user rated in the next 30 days; "
          f"{len(MOVIELENS_CUTS_DAYS)} cut-offs every 15 days from {first:%Y-%m-%d} to "
          f"{last:%Y-%m-%d}, averaged over every user evaluated (one cut-off has ~100 users, "
          "too few to rank models that close).",
          _table(by_time), verdict(time_metrics),
          "### Per-user split (the literature's protocol)",
          "Each user's latest 20% of films (by first rating) held out, the rest of everyone's "
          "ratings for training (RecBole's time-ordered split by user). Other users' later "
          "ratings are in the training data, so it measures personalisation, not the drift a "
          "shop meets; the ranker learns on the same kind of split inside the training data.",
          _table(latest), verdict(latest_metrics)]  # fmt: skip
    return {**time_metrics, "latest": latest_metrics}, md


def run(snap: Snapshot, out: Path, data_dir: Path | None = None,
        truth: pd.DataFrame | None = None) -> Path:  # fmt: skip
    """Write ``out``/report.md, its plots and metrics.json; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    md = [
        "# shop-crm offline evaluation",
        f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `crm evaluate`; every split is by "
        "time (train before a cut-off, test after).",
    ]
    metrics["project"], part = evaluate_project(snap, truth, out)
    md += part
    if data_dir and (data_dir / "CDNOW_master.txt").exists():
        metrics["cdnow"], part = evaluate_cdnow(data_dir / "CDNOW_master.txt", out)
        md += part
    else:
        md += ["## CDNOW", "Skipped: CDNOW_master.txt not found (run ../shared/data/fetch.sh)."]
    if data_dir and (data_dir / "ml-100k.inter").exists():
        metrics["movielens"], part = evaluate_movielens(data_dir)
        md += part
    else:
        md += ["## MovieLens 100K", "Skipped: ml-100k.* not found (run ../shared/data/fetch.sh)."]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    report = out / "report.md"
    report.write_text("\n\n".join(md) + "\n")
    return report
