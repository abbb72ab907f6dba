"""How figures read in a terminal: counts as integers, each trained model's metrics beside its
baselines', every column readable at 80 characters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from rich.table import Table

# How a baseline's figure is named among a model's metrics: a prefix or suffix of the metric
# it compares with, and the column it is shown in. Longest first: "popularity_all_time_"
# before "popularity_".
BASELINE_PREFIXES = {
    "model_": "model (lost)",  # the model's figures when its baseline is served instead
    "popularity_all_time_": "all-time pop.",
    "popularity_": "popularity",
    "als_": "ALS",
    "ease_": "EASE",
}
BASELINE_SUFFIXES = {"_recency_baseline": "recency", "_global_hour": "global hour"}


class Trained(Protocol):
    task: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    key_metric: str
    serves: str


def number(value: float) -> str:
    """Counts as integers with thousands separators, other figures to three decimals."""
    if isinstance(value, int):
        return f"{value:,}"
    if value == value and float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.3f}"


def _split(metrics: Mapping[str, float]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{metric: {column: value}} with the model's own value under "model", and the baseline
    columns in order of appearance."""
    names = set(metrics)
    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for name, value in metrics.items():
        metric, column = name, "model"
        for prefix, label in BASELINE_PREFIXES.items():
            if name.startswith(prefix) and name[len(prefix) :] in names:
                metric, column = name[len(prefix) :], label
                break
        else:
            for suffix, label in BASELINE_SUFFIXES.items():
                if name.endswith(suffix) and name[: -len(suffix)] in names:
                    metric, column = name[: -len(suffix)], label
                    break
        if column != "model" and column not in columns:
            columns.append(column)
        rows.setdefault(metric, {})[column] = value
    return rows, columns


def training_tables(results: Sequence[Trained]) -> list[tuple[str, Table]]:
    """Per task, a heading (its version; whether it became champion, and why; a baseline
    that does better on the deciding metric) and a table of each held-out metric, the
    model's beside each baseline's; the deciding metric comes first, marked *."""
    order = ["model (lost)", "popularity", "all-time pop.", "ALS", "EASE",
             *BASELINE_SUFFIXES.values()]  # fmt: skip
    shown = []
    for r in results:
        rows, columns = _split(r.metrics)
        columns.sort(key=order.index)
        key = r.key_metric
        served = "model" if r.serves == "model" else f"{r.serves} (served)"
        heading = f"[bold]{r.task}[/bold] " + (
            f"v{r.version}: {'champion' if r.promoted else 'not promoted'} ({r.reason})"
            if r.metrics
            else r.reason
        )
        decided = rows.get(key, {})
        ahead = [c for c in columns if decided.get(c, float("-inf")) > decided.get("model", 0.0)]
        if ahead and r.serves == "model":
            heading += f"\n  [yellow]{', '.join(ahead)} does better on {key}[/yellow]"
        elif r.serves != "model":
            heading += f"\n  [yellow]serves the {r.serves}: the model did not beat it[/yellow]"
        table = Table("metric", served, *columns)
        for metric in sorted(rows, key=lambda m: m != key):
            values = rows[metric]
            cells = [number(values[c]) if c in values else "" for c in ("model", *columns)]
            table.add_row(metric + (" *" if metric == key else ""), *cells)
        shown.append((heading, table))
    return shown
