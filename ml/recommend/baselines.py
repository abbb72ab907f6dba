"""Baselines evaluated on the same split: global popularity and implicit's ALS."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from ml.recommend import candidates
from ml.recommend.candidates import EASE_MAX_ITEMS, Index, ease_weights


def popularity_lists(
    ix: Index, users: list[str], n: int, exclude_seen: bool = False, all_time: bool = False
) -> dict[str, list[str]]:
    """The most popular items: decayed (HALF_LIFE_DAYS, what serving's cold start uses) or
    counted over all time."""
    order = np.argsort(-(ix.popularity_all_time if all_time else ix.popularity), kind="stable")
    if not exclude_seen:
        top = [str(p) for p in ix.products[order[:n]]]
        return {u: top for u in users}
    out = {}
    for u, row in zip(users, ix.customers.get_indexer(users), strict=True):
        seen = set(ix.weights[row].indices)
        out[u] = [str(ix.products[i]) for i in order if i not in seen][:n]
    return out


def als_lists(
    ix: Index,
    users: list[str],
    n: int,
    seed: int = 0,
    factors: int = 32,
    exclude_seen: bool = False,
) -> dict[str, list[str]]:
    """Matrix factorisation on the decayed interaction weights (confidence = 1 + 20 w)."""
    from implicit.als import AlternatingLeastSquares

    conf = ix.weights.copy().astype(np.float32)
    conf.data = 20 * conf.data
    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not BLAS's
        model = AlternatingLeastSquares(
            factors=factors, iterations=15, regularization=0.05, random_state=seed
        )
        model.fit(conf, show_progress=False)
    rows = ix.customers.get_indexer(users)
    ids, _ = model.recommend(rows, conf[rows], N=n, filter_already_liked_items=exclude_seen)
    return {u: [str(ix.products[i]) for i in ids[k] if i >= 0] for k, u in enumerate(users)}


def ease_lists(
    ix: Index, users: list[str], n: int, lam: float = 1000.0, exclude_seen: bool = False
) -> dict[str, list[str]] | None:
    """EASE (Steck 2019), the strong linear item-to-item baseline, on the decayed weights;
    None when the catalogue is too large for its dense inverse."""
    if len(ix.products) > EASE_MAX_ITEMS:
        return None
    # sparse until the items x items gram: never a dense customers x items matrix
    b = ease_weights(ix.weights.T @ ix.weights, lam)
    rows = ix.customers.get_indexer(users)
    out: dict[str, list[str]] = {}
    chunk = candidates.CHUNK
    for start in range(0, len(users), chunk):  # a chunk's dense scores at a time, not everyone's
        seen = ix.weights[rows[start : start + chunk]]
        scores = np.asarray(seen @ b)
        if exclude_seen:
            scores[seen.nonzero()] = -np.inf
        top = top_n(scores, n)
        for k, u in enumerate(users[start : start + chunk]):
            out[u] = [str(ix.products[i]) for i in top[k]]
    return out


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Each row's n best columns, best first (a partition, then a sort of those n only)."""
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
