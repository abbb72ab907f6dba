"""What `crm train` prints: readable at 80 columns, counts as integers, each metric beside
its baselines, a baseline that does better on the deciding metric called out."""

from __future__ import annotations

from rich.console import Console

from crm.display import number, training_tables
from ml.jobs import TaskResult

RECOMMENDATIONS = {
    "ndcg@10": 0.3603, "users": 1247.0, "recall@20": 0.4283, "coverage@10": 0.396,
    "customers_evaluated": 1247.0,
    **{f"{p}_{m}": v for p, off in [("popularity", 0.18), ("popularity_all_time", 0.17),
                                     ("als", 0.1), ("ease", 0.03)]
       for m, v in [("ndcg@10", 0.36 - off), ("recall@20", 0.43 - off),
                    ("coverage@10", 0.4 - off), ("users", 1247.0)]},
}  # fmt: skip
CHURN = {"auc": 0.8414, "auc_recency_baseline": 0.8598, "brier": 0.147, "customers": 1772.0}


def _render(results: list[TaskResult]) -> str:
    console = Console(width=80, record=True, color_system=None)
    for heading, table in training_tables(results):
        console.print(heading)
        if table.row_count:
            console.print(table)
    return console.export_text()


def test_numbers_are_integers_when_they_count_things() -> None:
    assert number(1945.0) == "1,945" and number(8.0) == "8"
    assert number(0.2641) == "0.264" and number(0.0) == "0.000"


def test_every_metric_reads_whole_at_80_columns_beside_its_baselines() -> None:
    text = _render([
        TaskResult("recommendations", "3", True, "ndcg@10 0.3603 > champion's 0.3500",
                   RECOMMENDATIONS, "ndcg@10"),
        TaskResult("churn", "2", False, "auc 0.8414 <= champion's 0.8500", CHURN, "auc"),
        TaskResult("segments", "-", False, "skipped: not enough history"),
    ])  # fmt: skip
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    assert "1,247" in text and "1247.000" not in text and "1,772" in text
    lines = text.splitlines()
    header = next(line for line in lines if "metric" in line and "model" in line)
    for column in ("popularity", "all-time pop.", "ALS", "EASE"):
        assert column in header
    ndcg = next(line for line in lines if line.startswith("│ ndcg@10 *"))
    assert [c.strip() for c in ndcg.split("│")[2:4]] == ["0.360", "0.180"]  # then popularity
    # the deciding metric comes first, and a baseline beating it is called out
    auc = lines.index(next(line for line in lines if "auc *" in line))
    assert "brier" in lines[auc + 1]
    assert "churn v2: not promoted (auc 0.8414 <= champion's 0.8500)" in text
    assert "recency does better on auc" in text
    assert "better on ndcg@10" not in text
    assert "segments skipped: not enough history" in text
