"""ML training and scoring time and peak memory at N simulated customers.

Each size: simulate, load and build the marts (not timed here), then three fresh processes:
load the snapshot (the baseline), train every task (MLflow, registry), score every customer
(ml.* and Redis). Times are reported as multiples of the snapshot load in the same run; peak
memory is each process's maximum resident set.

    python bench/ml_bench.py [--customers 100000 1000000] [--days 35]

35 days is the least history every task trains on (churn: 7-day window, cut-offs back 4 weeks).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import resource
import time
from pathlib import Path
from typing import Any

from dbt_bench import fresh_db  # bench/ is on the path when this runs as a script

from crm import db
from crm.ingest.load import ingest_paths
from crm.settings import get_settings
from crm.simulate import SimConfig, simulate
from crm.transform import build
from ml.tracking import sqlalchemy_url


def _phase(name: str, env: dict[str, str], q: Any) -> None:
    os.environ.update(env)
    from ml import jobs
    from ml.data import load_snapshot

    t = time.perf_counter()
    snap = load_snapshot()
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    if name == "train":
        jobs.train(params=jobs.TrainParams(churn_window_days=7), snapshot=snap)
    elif name == "score":
        jobs.score(snapshot=snap)
    work = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"load": loaded, "work": work, "rss_mb": rss_mb, "customers": len(snap.customers)})


def run_phase(name: str, env: dict[str, str]) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_phase, args=(name, env, q))
    p.start()
    while True:
        try:
            out = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the {name} phase failed (exit code {p.exitcode})") from None
    p.join()
    return out  # type: ignore[no-any-return]


def _built(admin: str, name: str) -> str | None:
    """The URL of an earlier run's database with its marts built, if there is one."""
    import psycopg

    url = db.with_database(admin, name)
    try:
        with psycopg.connect(url) as conn:
            ok = conn.execute("select to_regclass('marts.customer_features')").fetchone()
    except psycopg.OperationalError:
        return None
    return url if ok and ok[0] else None


def one_size(
    customers: int, days: int, work: Path, admin: str, reuse: bool = False
) -> dict[str, float]:
    sim = work / f"ml-sim-{customers}u-{days}d"
    url = _built(admin, f"bench_ml_{customers}") if reuse else None
    if url is None:
        if not (sim / "manifest.json").exists():
            simulate(SimConfig(users=customers, days=days, seed=3), sim)
        url = fresh_db(admin, f"bench_ml_{customers}")
        db.upgrade(url)
        settings = get_settings().model_copy(update={"database_url": url})
        t = time.perf_counter()
        ingest_paths(sorted((sim / "events").iterdir()), settings=settings)
        build(url=url, capture=True)
        print(f"{customers:,} customers: pipeline {time.perf_counter() - t:.0f}s", flush=True)
    else:
        print(f"{customers:,} customers: the marts of an earlier run (--reuse)", flush=True)
    tracking = fresh_db(admin, f"bench_mlflow_{customers}")
    env = {
        "CRM_DATABASE_URL": url,
        "CRM_HOME": str(work / f"ml-home-{customers}"),
        "CRM_MLFLOW_TRACKING_URI": sqlalchemy_url(tracking),
    }
    base = run_phase("load", env)
    train = run_phase("train", env)
    score = run_phase("score", env)
    row = {
        "customers": base["customers"],
        "load_s": base["load"],
        "load_mb": base["rss_mb"],
        "train_s": train["work"],
        "train_mb": train["rss_mb"],
        "score_s": score["work"],
        "score_mb": score["rss_mb"],
    }
    print(
        f"  snapshot load {row['load_s']:.1f}s ({row['load_mb']:.0f} MB); train "
        f"{row['train_s']:.1f}s = {row['train_s'] / row['load_s']:.1f}x load, peak "
        f"{row['train_mb']:.0f} MB; score {row['score_s']:.1f}s = "
        f"{row['score_s'] / row['load_s']:.1f}x load, peak {row['score_mb']:.0f} MB",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, nargs="+", default=[100_000])
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--reuse", action="store_true",
                    help="time the ML phases on the marts an earlier run built")  # fmt: skip
    args = ap.parse_args()
    settings = get_settings()
    work = Path(settings.home) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    admin = db.database_url(settings)
    rows = [one_size(n, args.days, work, admin, args.reuse) for n in args.customers]
    print(f"\n{'customers':>10}{'load s':>8}{'train s':>9}{'x load':>8}{'train MB':>10}"
          f"{'score s':>9}{'x load':>8}{'score MB':>10}")  # fmt: skip
    for r in rows:
        print(
            f"{r['customers']:>10,.0f}{r['load_s']:>8.1f}{r['train_s']:>9.1f}"
            f"{r['train_s'] / r['load_s']:>8.1f}{r['train_mb']:>10.0f}{r['score_s']:>9.1f}"
            f"{r['score_s'] / r['load_s']:>8.1f}{r['score_mb']:>10.0f}"
        )


if __name__ == "__main__":
    main()
