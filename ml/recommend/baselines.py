"""Baselines evaluated on the same split: global popularity and implicit's ALS."""

from __future__ import annotations

import os

import numpy as np

from ml.recommend.candidates import Index

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def popularity_lists(ix: Index, users: list[str], n: int) -> dict[str, list[str]]:
    top = [str(p) for p in ix.products[np.argsort(-ix.popularity)[:n]]]
    return {u: top for u in users}


def als_lists(
    ix: Index, users: list[str], n: int, seed: int = 0, factors: int = 32
) -> dict[str, list[str]]:
    """Matrix factorisation on the decayed interaction weights (confidence = 1 + 20 w)."""
    from implicit.als import AlternatingLeastSquares

    conf = ix.weights.copy().astype(np.float32)
    conf.data = 20 * conf.data
    model = AlternatingLeastSquares(factors=factors, iterations=15, regularization=0.05,
                                    random_state=seed)  # fmt: skip
    model.fit(conf, show_progress=False)
    rows = ix.customers.get_indexer(users)
    ids, _ = model.recommend(rows, conf[rows], N=n, filter_already_liked_items=False)
    return {u: [str(ix.products[i]) for i in ids[k] if i >= 0] for k, u in enumerate(users)}
