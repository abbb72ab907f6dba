"""Top-N metrics as plain functions over (ranked items) and (relevant items with gains).

Definitions follow microsoft/recommenders' python_evaluation: NDCG with log2 discounts and the
ideal ordering of the relevant items; Recall@k = hits in the top k / relevant items; MAP@k =
mean of precision at each hit, divided by min(k, relevant items).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def ndcg_at_k(ranked: Sequence[str], gains: Mapping[str, float], k: int = 10) -> float:
    dcg = sum(gains.get(item, 0.0) / math.log2(i + 2) for i, item in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 20) -> float:
    rel = set(relevant)
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


def average_precision_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    rel = set(relevant)
    if not rel:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k]):
        if item in rel:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(rel))


def coverage(recommendations: Iterable[Sequence[str]], catalog_size: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    seen: set[str] = set()
    for items in recommendations:
        seen.update(items)
    return len(seen) / catalog_size if catalog_size else 0.0


def evaluate_lists(
    lists: Mapping[str, Sequence[str]], truth: Mapping[str, Mapping[str, float]], catalog_size: int
) -> dict[str, float]:
    """Mean NDCG@10, Recall@20, MAP@10 over customers with held-out items, and coverage@10."""
    users = [u for u in truth if truth[u]]
    if not users:
        return {"ndcg@10": 0.0, "recall@20": 0.0, "map@10": 0.0, "coverage@10": 0.0, "users": 0.0}
    n = len(users)
    return {
        "ndcg@10": sum(ndcg_at_k(lists.get(u, []), truth[u], 10) for u in users) / n,
        "recall@20": sum(recall_at_k(lists.get(u, []), truth[u], 20) for u in users) / n,
        "map@10": sum(average_precision_at_k(lists.get(u, []), truth[u], 10) for u in users) / n,
        "coverage@10": coverage((lists.get(u, [])[:10] for u in users), catalog_size),
        "users": float(n),
    }
