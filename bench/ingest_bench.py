"""Ingest throughput on ~1M simulated events against two baselines measured in the same run.

- ceiling: PostgreSQL's own COPY of the same raw lines into a single jsonb column;
- pandas:  ``DataFrame.to_sql`` of the same lines (what many teams write);
- shop-crm: ``crm ingest`` (validation, dedup, audit, partitions) of the same file.

Each runs in a fresh database on the same server. Usage:
    python bench/ingest_bench.py [--events 1000000] [--pandas-sample 200000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import psycopg

from crm import db
from crm.ingest.files import iter_lines
from crm.ingest.load import ingest_paths
from crm.settings import get_settings
from crm.simulate import SimConfig, simulate

EVENTS_PER_USER_DAY = 2.1  # measured on the simulator's default mix


def fresh_db(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return db.with_database(admin_url, name)


def dataset(work: Path, events: int) -> Path:
    users = max(100, int(events / (60 * EVENTS_PER_USER_DAY)))
    sim = work / f"sim-{users}u-60d-clean"
    if not (sim / "manifest.json").exists():
        t = time.perf_counter()
        # No garbage lines here: PostgreSQL's COPY, the baseline, aborts a whole file on one.
        s = simulate(SimConfig(users=users, days=60, seed=7, broken_rate=0.0), sim)
        print(f"simulated {s.events:,} events in {time.perf_counter() - t:.1f}s")
    plain = work / f"{sim.name}.jsonl"
    if not plain.exists():
        with plain.open("wb") as out:
            for f in sorted((sim / "events").rglob("*.jsonl.gz")):
                out.write(gzip.decompress(f.read_bytes()))
    return plain


def bench_copy(url: str, path: Path) -> float:
    with psycopg.connect(url) as conn:
        conn.execute("create table raw_lines (doc jsonb)")
        t = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("copy raw_lines (doc) from stdin") as cp,
            path.open("rb") as f,
        ):
            for chunk in iter(lambda: f.read(1 << 22), b""):
                cp.write(chunk.replace(b"\\", b"\\\\"))
        conn.commit()
        return time.perf_counter() - t


def bench_pandas(url: str, path: Path, limit: int) -> tuple[float, int]:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    t = time.perf_counter()
    records = []
    for _, raw in iter_lines(path):
        records.append(json.loads(raw))
        if len(records) >= limit:
            break
    df = pd.json_normalize(records, max_level=0)
    for col in ("properties", "traits", "context"):
        if col in df:
            df[col] = df[col].map(json.dumps)
    df = df.drop_duplicates("messageId")
    df.to_sql("events", engine, if_exists="append", index=False, chunksize=5_000, method="multi")
    return time.perf_counter() - t, len(records)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument(
        "--pandas-sample",
        type=int,
        default=200_000,
        help="lines pandas loads (its rate is measured on a prefix to save time)",
    )
    args = ap.parse_args()
    settings = get_settings()
    work = Path(settings.home) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    path = dataset(work, args.events)
    lines = sum(1 for _ in path.open("rb"))
    admin = db.database_url(settings)
    print(f"{lines:,} lines, {path.stat().st_size / 1e6:.0f} MB")

    t_copy = bench_copy(fresh_db(admin, "bench_copy"), path)
    print(f"COPY: {t_copy:.1f}s", flush=True)
    ours_url = fresh_db(admin, "bench_crm")
    db.upgrade(ours_url)
    t = time.perf_counter()
    [res] = ingest_paths([path], url=ours_url, settings=settings)
    t_ours = time.perf_counter() - t
    print(f"crm ingest: {t_ours:.1f}s", flush=True)
    t_pd, n_pd = bench_pandas(fresh_db(admin, "bench_pandas"), path, args.pandas_sample)

    rate_copy, rate_ours, rate_pd = lines / t_copy, lines / t_ours, n_pd / t_pd
    print(f"\n{'method':<34}{'events/s':>12}{'vs COPY':>10}")
    print(f"{'PostgreSQL COPY -> jsonb (ceiling)':<34}{rate_copy:>12,.0f}{1.0:>10.2f}")
    ours = "crm ingest (validate+dedup+audit)"
    print(f"{ours:<34}{rate_ours:>12,.0f}{rate_ours / rate_copy:>10.2f}")
    print(f"{'pandas to_sql':<34}{rate_pd:>12,.0f}{rate_pd / rate_copy:>10.2f}")
    print(
        f"\ncrm ingest: loaded {res.loaded:,}, duplicates {res.duplicates:,}, "
        f"rejected {res.rejected:,}; target >= 0.60 of COPY: "
        f"{'MET' if rate_ours / rate_copy >= 0.6 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
