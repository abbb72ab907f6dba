"""The recommender: candidates ranked by LightGBM lambdarank, then business rules.

Training is a time split inside the training data: candidates from everything before an
inner cut-off, labels (view 1, cart 2, purchase 3) from the window after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMRanker

from ml.data import NotEnoughHistory, Snapshot
from ml.recommend.candidates import (
    CHUNK,
    FEATURES,
    Index,
    ItemState,
    build_index,
    candidates,
    customer_index,
    heldout_gains,
    holdout_latest,
    sample_customers,
    undecayed_weights,
)
from ml.recommend.metrics import evaluate_lists

DAY = pd.Timedelta(days=1)
DURABLE_REPEAT_RATE = 0.1  # categories where fewer buyers repurchase are durables
RECENT_DURABLE_DAYS = 90
MAX_PER_CATEGORY = 4  # in the top 10


_COMPILED: dict[str, Any] = {}  # a ranker's model text's digest -> its compiled trees


def compiled(ranker: LGBMRanker) -> Any:
    """The ranker's trees compiled to machine code by lleaves (once per process and model,
    0.4 s): it scores candidates 7.7x faster than LightGBM's own predict (2,000 customers'
    candidates 0.057 s against 0.44 s, one core), the same scores to 5e-15."""
    import lleaves

    text = ranker.booster_.model_to_string()
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _COMPILED:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.txt"
            path.write_text(text)
            model = lleaves.Model(model_file=str(path))
            model.compile()
        _COMPILED.clear()  # one model at a time: a new champion replaces the last
        _COMPILED[key] = model
    return _COMPILED[key]


def comparison_metrics(table: pd.DataFrame) -> dict[str, float]:
    """A comparison table (one row per model) as flat metrics: ours unprefixed, each
    baseline's prefixed by its name (``als_ndcg@10``)."""
    out: dict[str, float] = {}
    for row in table.to_dict("records"):
        prefix = "" if row["model"] == "ours" else f"{row['model']}_"
        out.update({f"{prefix}{k}": float(v) for k, v in row.items() if k != "model"})
    return out


def apply_rules(cand: pd.DataFrame, ix: Index, n: int) -> dict[int, list[int]]:
    """customer row -> its list of product columns, by ``picks``."""
    rows, items = picks(cand, ix, n)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
    lists = np.split(items, starts[1:])
    return {int(rows[s]): lst.tolist() for s, lst in zip(starts, lists, strict=True)}


def picks(cand: pd.DataFrame, ix: Index, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(customer row, product column) of each customer's list, the rows ascending and each
    list in its order. Per customer row: drop durables bought recently, then keep at most
    MAX_PER_CATEGORY
    of one category in the first 10, in score order (an item over its category's share waits
    behind the others).

    In arrays rather than a loop per customer: while fewer than 10 are picked, an item is
    picked exactly when fewer than MAX_PER_CATEGORY of its category came before it in the
    customer's list (those all were picked); after the 10th pick every item is. So the list is
    the picked items in score order, then the held ones, cut at ``n``."""
    drop = (
        (cand.bought_before > 0)
        & (cand.repeat_rate < DURABLE_REPEAT_RATE)
        & (cand.days_since_bought <= RECENT_DURABLE_DAYS)
    )
    cand = cand[~drop]
    if not len(cand):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, score = cand.r.to_numpy(), cand.score.to_numpy()
    order = np.lexsort((-score, rows))  # by customer, best first; ties keep their order
    rows, item = rows[order], cand["item"].to_numpy()[order]
    cat = ix.category_of[item]
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    sizes = np.diff(np.r_[starts, len(rows)])
    group = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(len(rows)) - starts[group]
    seen = pd.DataFrame({"r": rows, "c": cat}).groupby(["r", "c"], sort=False).cumcount()
    eligible = seen.to_numpy() < MAX_PER_CATEGORY
    running = np.cumsum(eligible)
    eligible_so_far = running - (running[starts] - eligible[starts])[group]
    tenth = eligible & (eligible_so_far == 10)
    last_capped = np.full(len(starts), np.iinfo(np.int64).max)
    last_capped[group[tenth]] = pos[tenth]
    bound = last_capped[group]
    picked = (eligible & (pos <= bound)) | (pos > bound)
    final = np.lexsort((pos, ~picked, group))  # picked in score order, then the held ones
    kept = pos < n  # ``final`` keeps the groups in place: pos is each one's rank
    return rows[kept], item[final][kept]


def _lists_frame(lists: dict[str, list[str]]) -> pd.DataFrame:
    """``Recommender.score``'s frame of customer -> list."""
    sizes = np.fromiter((len(v) for v in lists.values()), dtype=np.int64, count=len(lists))
    rank = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    frame = pd.DataFrame({
        "customer_id": np.repeat(np.array(list(lists), dtype=object), sizes), "rank": rank,
        "product_id": np.fromiter(chain.from_iterable(lists.values()), dtype=object),
    })  # fmt: skip
    frame["score"] = (1.0 / frame["rank"]).round(4)
    return frame


@dataclass
class Recommender:
    horizon_days: int = 7
    n: int = 20
    seed: int = 0
    # catalogues where nobody consumes an item twice (films, books): never re-recommend
    exclude_seen: bool = False
    splits: int = 2  # inner splits stacked (more groups for the ranker)
    # how the ranker's training groups are cut from the training data, as the model is
    # evaluated: "time" (history before an inner cut-off, labels from the ``horizon_days``
    # after it: what serving does) or "latest" (each customer's latest ``holdout_share`` of
    # products held out, ``holdout_latest``: the per-customer split of the literature)
    protocol: str = "time"
    holdout_share: float = 0.2
    # evaluations also run ALS and EASE on undecayed weights (the offline report: a per-user
    # split has no common "now" to decay from); training jobs skip the extra fits
    all_time_baselines: bool = False
    # customers (ranking groups) per horizon the ranker learns from: a random sample beyond
    # this, so training memory stays flat as the shop grows (~250 candidates x 12 features
    # each: 100k customers would hold 2.4 GB of candidates per horizon)
    max_groups: int = 20_000
    # held-out customers an evaluation ranks (a random sample beyond this): the standard
    # error of NDCG@10 over 50,000 customers is ~0.002, and every model of the comparison
    # (ours, popularity, ALS, EASE) ranks each of them, so evaluating stays flat as the shop grows
    max_eval_customers: int = 50_000
    ranker: LGBMRanker | None = None
    popular_items: list[str] = field(default_factory=list)  # the last cold-start list served
    groups_trained: int = 0  # ranking groups (customer x horizon) the ranker learnt from

    task = "recommendations"
    key_metric = "ndcg@10"
    kind = "model"

    def _training_groups(self, history: Snapshot, labels: Snapshot, offset: int) -> pd.DataFrame:
        """Candidates from ``history`` labelled by what each customer did in ``labels``."""
        ix = build_index(history)
        gains = heldout_gains(labels)
        users = [u for u in gains if u in ix.customers]
        if not users:
            return pd.DataFrame()
        users = sample_customers(users, self.max_groups, self.seed + offset)
        items = ix.products.to_numpy()
        parts = []
        for start in range(0, len(users), CHUNK):  # bounded memory: dense scores per chunk
            chunk = users[start : start + CHUNK]
            cand = candidates(ix, ix.customers.get_indexer(chunk), exclude_seen=self.exclude_seen)
            cand["label"] = [
                gains[chunk[r]].get(items[i], 0.0) for r, i in zip(cand.r, cand.item, strict=True)
            ]
            cand = cand[cand.groupby("r").label.transform("max") > 0]
            parts.append(cand.assign(r=cand.r + offset + start))
        return pd.concat(parts, ignore_index=True)

    def _inner_splits(self, snap: Snapshot) -> list[tuple[Snapshot, Snapshot]]:
        """(history, labels) pairs inside the training data, the last ``splits`` of them."""
        if self.protocol == "latest":
            out, rest = [], snap
            for _ in range(self.splits):
                rest, held = holdout_latest(rest, self.holdout_share)
                out.append((rest, held))
            return out
        if self.protocol != "time":
            raise ValueError(f"protocol must be 'time' or 'latest', not {self.protocol!r}")
        h = self.horizon_days * DAY
        cuts = [snap.end - k * h for k in range(1, self.splits + 1)]
        return [(snap.before(c), snap.between(c, c + h)) for c in cuts]

    def fit(self, snap: Snapshot) -> Recommender:
        """Stack ``splits`` inner splits of the training data as ranking groups."""
        frames = []
        for k, (history, labels) in enumerate(self._inner_splits(snap), start=1):
            part = self._training_groups(history, labels, k * 10**7)
            if len(part):
                frames.append(part)
        if not frames:
            raise NotEnoughHistory(
                "recommendations: no customer came back within the training horizon"
            )
        cand = pd.concat(frames, ignore_index=True).sort_values("r", kind="stable")
        self.groups_trained = int(cand.r.nunique())
        self.ranker = LGBMRanker(
            # small trees with many rows per leaf: a young shop (or MovieLens) has only a
            # few hundred ranking groups, and deeper trees memorised them (NDCG@10 0.145 ->
            # 0.177 on MovieLens, the simulator unchanged)
            objective="lambdarank", n_estimators=150, learning_rate=0.05, num_leaves=7,
            min_child_samples=100, random_state=self.seed, verbose=-1,
            label_gain=[0, 1, 3, 7],
        )  # fmt: skip
        self.ranker.fit(
            cand[FEATURES],
            cand.label.astype(int),
            group=cand.groupby("r", sort=False).size().to_numpy(),
        )
        return self

    def recommend(self, snap: Snapshot | None = None, customers: list[str] | None = None,
                  index: Index | None = None,
                  items: ItemState | None = None) -> dict[str, list[str]]:  # fmt: skip
        """customer -> ranked product ids; customers without history get popular items.
        ``items``: the whole shop's item state when ``snap`` holds some customers only."""
        if index is None and snap is None:
            raise ValueError("recommend needs the data to serve from: a snapshot or an index")
        if index is None and items is not None:
            index = customer_index(snap, items)  # type: ignore[arg-type]
        ix = index or build_index(snap)  # type: ignore[arg-type]
        wanted = customers if customers is not None else list(ix.customers)
        out = self._ranked(ix, [c for c in wanted if c in ix.customers])
        ids = ix.products.to_numpy()
        popular = [str(ids[i]) for i in np.argsort(-ix.popularity)[: self.n]]
        self.popular_items = popular
        for c in wanted:
            out.setdefault(c, popular)
        return out

    def _ranked(self, ix: Index, known: list[str]) -> dict[str, list[str]]:
        """The ranker's lists for customers of the index."""
        rows, picked = self._picks(ix, ix.customers.get_indexer(known))
        ids, items = ix.customers.to_numpy(), ix.products.to_numpy()
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
        lists = np.split(items[picked], starts[1:])
        return {str(ids[rows[s]]): [str(i) for i in lst]
                for s, lst in zip(starts, lists, strict=True)}  # fmt: skip

    def _picks(self, ix: Index, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(customer row, product column) of the lists of ``ix``'s customer rows ``rows``, in
        the order of ``rows`` and each list's."""
        assert self.ranker is not None, "fit first"
        trees = compiled(self.ranker)
        out_rows, out_items = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for start in range(0, len(rows), CHUNK):
            chunk = np.asarray(rows[start : start + CHUNK])
            cand = candidates(ix, chunk, exclude_seen=self.exclude_seen)
            cand["score"] = trees.predict(cand[FEATURES].to_numpy(np.float64), n_jobs=1)
            r, picked = picks(cand, ix, self.n)
            out_rows.append(chunk[r])
            out_items.append(picked)
        return np.concatenate(out_rows), np.concatenate(out_items)

    def score(self, snap: Snapshot, items: ItemState | None = None) -> pd.DataFrame:
        """Every customer of the snapshot; those with no product history (new, anonymous)
        get the popular items (cold start). ``items``: the shop's item state (a shard).
        The lists as ``recommend``'s, built as columns of Arrow text (22M rows at 1M
        customers: no Python string per row)."""
        import pyarrow as pa

        if type(self)._ranked is not Recommender._ranked:  # a baseline's own lists
            return _lists_frame(self.recommend(snap, customers=list(snap.customers.customer_id),
                                               items=items))  # fmt: skip
        ix = customer_index(snap, items) if items is not None else build_index(snap)
        wanted = snap.customers.customer_id.astype(str).to_numpy(dtype=object)
        at = ix.customers.get_indexer(wanted)
        rows, picked = self._picks(ix, at[at >= 0])
        popular = np.argsort(-ix.popularity)[: self.n]
        ids = ix.products.to_numpy()
        self.popular_items = [str(ids[i]) for i in popular]
        # the customers with a list of their own, then everyone else with the popular one
        has_list = np.zeros(len(ix.customers), dtype=bool)
        has_list[rows] = True
        cold = wanted[~((at >= 0) & has_list[np.maximum(at, 0)])]
        text = pa.large_string()
        customers = pa.array(np.asarray(ix.customers, dtype=object), type=text)
        products = pa.array(np.asarray(ids, dtype=object), type=text)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
        sizes = np.diff(np.r_[starts, len(rows)])
        rank = np.arange(len(rows)) - np.repeat(starts, sizes) + 1
        table = pa.table({
            "customer_id": pa.concat_arrays([
                customers.take(rows), pa.array(np.repeat(cold, len(popular)), type=text)]),
            "rank": np.r_[rank, np.tile(np.arange(1, len(popular) + 1), len(cold))],
            "product_id": pa.concat_arrays([
                products.take(picked), products.take(np.tile(popular, len(cold)))]),
        })  # fmt: skip
        mapper = {text: pd.StringDtype("pyarrow", na_value=float("nan"))}
        frame = table.to_pandas(types_mapper=mapper.get)
        frame["score"] = (1.0 / frame["rank"]).round(4)
        return frame

    def evaluate(
        self, snap: Snapshot, cutoff: pd.Timestamp
    ) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
        """Ours against global popularity (decayed and all-time), ALS and (small catalogues)
        EASE on the same split: train history before ``cutoff``, relevant items =
        interactions in the window after it."""
        truth = heldout_gains(snap.between(cutoff, cutoff + self.horizon_days * DAY))
        return self.compare(snap.before(cutoff), truth)

    def evaluate_latest(
        self, history: Snapshot, heldout: Snapshot
    ) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
        """The same comparison on a per-customer split (``holdout_latest``)."""
        return self.compare(history, heldout_gains(heldout))

    def compare(
        self, train: Snapshot, truth: dict[str, dict[str, float]]
    ) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
        """Every model ranks for the customers of ``truth`` known in ``train``."""
        ix = build_index(train)
        users = [u for u in truth if u in ix.customers]
        users = sample_customers(users, self.max_eval_customers, self.seed)
        truth = {u: truth[u] for u in users}
        results = {
            "ours": evaluate_lists(self.recommend(customers=users, index=ix), truth,
                                   len(ix.products)),
            **self._rivals(train, ix, users, truth),
        }  # fmt: skip
        table = pd.DataFrame(results).T.reset_index(names="model").astype({"users": int})
        metrics = comparison_metrics(table)
        metrics["customers_evaluated"] = float(len(users))
        return metrics, {"comparison": table}

    def _rivals(self, train: Snapshot, ix: Index, users: list[str],
                truth: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:  # fmt: skip
        """The baselines' figures on the same customers: popularity, ALS, EASE."""
        from ml.recommend.baselines import als_lists, ease_lists, popularity_lists

        size = len(ix.products)
        results = {
            "popularity": evaluate_lists(
                popularity_lists(ix, users, self.n, self.exclude_seen), truth, size
            ),
            "popularity_all_time": evaluate_lists(
                popularity_lists(ix, users, self.n, self.exclude_seen, all_time=True), truth, size
            ),
        }
        inputs = {"": ix}  # the baselines on decayed weights, and on undecayed ones if asked
        if self.all_time_baselines:
            inputs["_all_time"] = dataclasses.replace(ix, weights=undecayed_weights(train, ix))
        for suffix, data in inputs.items():
            als = als_lists(data, users, self.n, seed=self.seed, exclude_seen=self.exclude_seen)
            results[f"als{suffix}"] = evaluate_lists(als, truth, size)
            ease = ease_lists(data, users, self.n, exclude_seen=self.exclude_seen)
            if ease is not None:
                results[f"ease{suffix}"] = evaluate_lists(ease, truth, size)
        return results


@dataclass
class Popular(Recommender):
    """The baseline: the most popular products (decayed, as the cold-start list), the same
    list for everyone (without what each has seen when ``exclude_seen``)."""

    kind = "baseline: popularity"

    def fit(self, snap: Snapshot) -> Popular:
        return self

    def _ranked(self, ix: Index, known: list[str]) -> dict[str, list[str]]:
        from ml.recommend.baselines import popularity_lists

        return popularity_lists(ix, known, self.n, self.exclude_seen)

    def _rivals(self, train: Snapshot, ix: Index, users: list[str],
                truth: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:  # fmt: skip
        """None: the model's comparison already shows the others beside it."""
        return {}
