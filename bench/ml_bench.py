"""ML training and scoring time and peak memory at N simulated customers.

Each size: simulate, load and build the marts (not timed here), then fresh processes: load the
snapshot (the baseline), train every task (MLflow, registry), score every customer (ml.* and
Redis) as one shard in one process, and again in shards (``--shards``, default the
CRM_SCORE_SHARDS rule: one per 150,000 customers) over ``--workers`` processes, each shard
reading only its customers' rows. Times are reported as multiples of the snapshot load and of
the one-shard scoring in the same run; peak memory is each process's maximum resident set
(for the shards, the largest of the processes that scored them).

    python bench/ml_bench.py [--customers 100000 1000000] [--days 35] [--scale-from 100000]
                             [--shards N] [--workers 2] [--reuse] [--models-from 100000]

35 days is the least history every task trains on (churn: 7-day window, cut-offs back 4 weeks).

Sizes above ``--scale-from`` copy that size's marts rather than simulate their own: 1M customers
would be ~80M events to simulate, load and build (hours and ~180 GB here), while the ML jobs
read only the marts. Copy k of every customer gets the suffix ``~k`` on its customer, session
and order ids; the catalogue is shared. So a 1M shop is ten 100k shops' behaviour side by side:
the same sizes the models see on a real shop of that size, not new behaviour.
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

    out: dict[str, Any] = {}
    t = time.perf_counter()
    if name == "score":  # each shard reads its own customers' rows
        shards = int(env.get("BENCH_SHARDS", "0")) or None
        result = jobs.score(shards=shards, workers=int(env.get("BENCH_WORKERS", "1")))
        with db.connect() as conn:
            steps = conn.execute(
                "select step, max(peak_mb), max(seconds) from ml.score_job_shards"
                " where job_id = %s group by step",
                (result["job_id"],),
            ).fetchall()
        out |= {"shards": result["shards"], "customers": result["rows"]["customer_value"],
                "steps": {s: (mb, sec) for s, mb, sec in steps}}  # fmt: skip
    else:
        snap = load_snapshot()
        out |= {"load": time.perf_counter() - t, "customers": len(snap.customers)}
        t = time.perf_counter()
        if name == "train":
            jobs.train(params=jobs.TrainParams(churn_window_days=7), snapshot=snap)
    out["work"] = time.perf_counter() - t
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(out)


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
            ok = conn.execute("select to_regclass('marts.dim_customers')").fetchone()
    except psycopg.OperationalError:
        return None
    return url if ok and ok[0] else None


# what the ML jobs read (ml.data.QUERIES) -> the id columns a copy suffixes
ML_MARTS: dict[str, tuple[str, ...]] = {
    "dim_customers": ("customer_id",),
    "dim_products": (),
    "fct_sessions": ("customer_id", "session_id"),
    "fct_orders": ("customer_id", "order_id"),
    "fct_order_items": ("customer_id", "order_id"),
    "fct_product_events": ("customer_id",),
    "fct_message_engagement": ("customer_id",),
}


def replicate(src: str, dst: str, copies: int) -> None:
    """``dst`` gets the ML marts of ``src`` as tables, each customer ``copies`` times."""
    import psycopg

    db.upgrade(dst)
    with psycopg.connect(src) as s, psycopg.connect(dst) as d:
        d.execute("create schema if not exists marts")
        for table, ids in ML_MARTS.items():
            cols = s.execute(
                "select attname, format_type(atttypid, atttypmod) from pg_attribute "
                "where attrelid = %s::regclass and attnum > 0 and not attisdropped "
                "order by attnum",
                (f"marts.{table}",),
            ).fetchall()
            d.execute(f"drop table if exists marts.{table}")
            d.execute(f"create table marts.{table} ({', '.join(f'{c} {t}' for c, t in cols)})")
            n = copies if ids else 1
            select = ", ".join(
                f"{c} || case when g = 0 then '' else '~' || g end" if c in ids else c
                for c, _ in cols
            )
            query = f"select {select} from marts.{table}, generate_series(0, {n - 1}) g"
            with (
                s.cursor().copy(f"copy ({query}) to stdout") as out,
                d.cursor().copy(f"copy marts.{table} from stdin") as into,
            ):
                for chunk in out:
                    into.write(chunk)
            d.commit()
            d.execute(f"analyze marts.{table}")
            d.commit()


def one_size(
    customers: int,
    days: int,
    work: Path,
    admin: str,
    reuse: bool = False,
    scale_from: int | None = None,
    shards: int | None = None,
    workers: int = 2,
    models_from: int | None = None,
) -> dict[str, float]:
    sim = work / f"ml-sim-{customers}u-{days}d"
    url = _built(admin, f"bench_ml_{customers}") if reuse else None
    if url is None and scale_from and customers > scale_from:
        base = _built(admin, f"bench_ml_{scale_from}")
        if base is None:
            raise SystemExit(f"--scale-from {scale_from}: run that size first (or with it)")
        copies = round(customers / scale_from)
        url = fresh_db(admin, f"bench_ml_{customers}")
        t = time.perf_counter()
        replicate(base, url, copies)
        print(f"{customers:,} customers: {copies} copies of the {scale_from:,} shop's marts "
              f"{time.perf_counter() - t:.0f}s", flush=True)  # fmt: skip
    elif url is None:
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
    trained = models_from or customers
    if models_from:  # the champions' promotions live in the shop's database: theirs, copied
        import psycopg

        with psycopg.connect(db.with_database(admin, f"bench_ml_{models_from}")) as s, \
                psycopg.connect(url) as d:  # fmt: skip
            d.execute("delete from ml.model_promotions")
            with (
                s.cursor().copy("copy ml.model_promotions to stdout") as out,
                d.cursor().copy("copy ml.model_promotions from stdin") as into,
            ):
                for chunk in out:
                    into.write(chunk)
    tracking = (db.with_database(admin, f"bench_mlflow_{trained}") if models_from
                else fresh_db(admin, f"bench_mlflow_{customers}"))  # fmt: skip
    env = {
        "CRM_DATABASE_URL": url,
        "CRM_HOME": str(work / f"ml-home-{trained}"),
        "CRM_MLFLOW_TRACKING_URI": sqlalchemy_url(tracking),
    }
    base = run_phase("load", env)
    # --models-from: score with the champions an earlier run of that size trained (its
    # MLflow database and home); no training and no one-shard scoring at this size
    skipped = {"work": float("nan"), "rss_mb": float("nan"), "steps": {}}
    train = run_phase("train", env) if not models_from else skipped
    one = (run_phase("score", {**env, "BENCH_SHARDS": "1", "BENCH_WORKERS": "1"})
           if not models_from else skipped)  # fmt: skip
    sharded = run_phase("score", {**env, "BENCH_SHARDS": str(shards or 0),
                                  "BENCH_WORKERS": str(workers)})  # fmt: skip
    row = {
        "customers": base["customers"],
        "load_s": base["load"],
        "load_mb": base["rss_mb"],
        "train_s": train["work"],
        "train_mb": train["rss_mb"],
        "score_s": one["work"],
        "score_mb": max([one["rss_mb"], *(mb for mb, _s in one["steps"].values())]),
        "sharded_s": sharded["work"],
        "shards": sharded["shards"],
        "shard_mb": max(mb for mb, _s in sharded["steps"].values()),
    }
    print(
        f"  snapshot load {row['load_s']:.1f}s ({row['load_mb']:.0f} MB); train "
        f"{row['train_s']:.1f}s = {row['train_s'] / row['load_s']:.1f}x load, peak "
        f"{row['train_mb']:.0f} MB; score in one shard {row['score_s']:.1f}s = "
        f"{row['score_s'] / row['load_s']:.1f}x load, peak {row['score_mb']:.0f} MB; in "
        f"{row['shards']} shards, {workers} processes {row['sharded_s']:.1f}s = "
        f"{row['sharded_s'] / row['score_s']:.2f}x one shard, peak per shard process "
        f"{row['shard_mb']:.0f} MB; steps (peak MB, slowest s): {sharded['steps']}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, nargs="+", default=[100_000])
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument(
        "--scale-from",
        type=int,
        default=None,
        help="reach larger sizes by copying this size's marts (module docstring)",
    )
    ap.add_argument(
        "--shards",
        type=int,
        default=None,
        help="shards of the sharded scoring run (default: CRM_SCORE_SHARDS' rule)",
    )
    ap.add_argument("--workers", type=int, default=2, help="its processes")
    ap.add_argument(
        "--models-from",
        type=int,
        default=None,
        help="score with the models a run of this size trained (sharded scoring only)",
    )
    ap.add_argument("--reuse", action="store_true",
                    help="time the ML phases on the marts an earlier run built")  # fmt: skip
    args = ap.parse_args()
    settings = get_settings()
    work = Path(settings.home) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    admin = db.database_url(settings)
    rows = [
        one_size(
            n,
            args.days,
            work,
            admin,
            args.reuse,
            args.scale_from,
            args.shards,
            args.workers,
            args.models_from if n != args.models_from else None,
        )
        for n in args.customers
    ]
    print(f"\n{'customers':>10}{'load s':>8}{'train s':>9}{'x load':>8}{'train MB':>10}"
          f"{'score s':>9}{'x load':>8}{'score MB':>10}{'shards':>7}{'sharded s':>10}"
          f"{'x 1 shard':>10}{'shard MB':>9}")  # fmt: skip
    for r in rows:
        print(
            f"{r['customers']:>10,.0f}{r['load_s']:>8.1f}{r['train_s']:>9.1f}"
            f"{r['train_s'] / r['load_s']:>8.1f}{r['train_mb']:>10.0f}{r['score_s']:>9.1f}"
            f"{r['score_s'] / r['load_s']:>8.1f}{r['score_mb']:>10.0f}{r['shards']:>7.0f}"
            f"{r['sharded_s']:>10.1f}{r['sharded_s'] / r['score_s']:>10.2f}{r['shard_mb']:>9.0f}"
        )


if __name__ == "__main__":
    main()
