"""dbt build times: a full build at N simulated events, and one day's incremental run as a
fraction of the full refresh (target < 0.2). Each size runs in its own fresh database.

    python bench/dbt_bench.py [--events 1000000 10000000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psycopg

from crm import db
from crm.ingest.load import ingest_paths
from crm.settings import get_settings
from crm.simulate import SimConfig, simulate
from crm.transform import DBT_PROJECT, build

DAYS = 60
EVENTS_PER_USER_DAY = 2.1


def fresh_db(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return db.with_database(admin_url, name)


def timed(label: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t
    print(f"  {label}: {seconds:.1f}s", flush=True)
    return out, seconds


def spread_loads(url: str) -> None:
    """History is ingested in one go here, but in production each day is loaded the morning
    after: give every load the start time it would have had (incremental models list new loads
    and tests pick recent ones by raw.load_audit.started_at), then vacuum as autovacuum would
    between two daily loads (it also summarises the BRIN indexes over the new pages)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "update raw.load_audit set started_at = per_load.loaded_at,"
            " finished_at = per_load.loaded_at + interval '1 minute' from ("
            " select load_id, max(event_date) + interval '1 day 1 hour' as loaded_at"
            " from raw.events group by load_id) as per_load"
            " where raw.load_audit.load_id = per_load.load_id"
        )
        conn.execute("vacuum (analyze) raw.events")
        checkpoint(conn)


def settle(url: str) -> None:
    """What the day between a full build and the next morning's load does to the database:
    autovacuum visits the tables the build wrote (hint bits, visibility map, BRIN summaries)
    and the checkpointer writes them out. Without it the timed incremental run started
    seconds after a 200 s build, while the build's writes were still being flushed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum")
        checkpoint(conn)


def checkpoint(conn: psycopg.Connection) -> None:
    """CHECKPOINT needs a superuser or pg_checkpoint (the embedded server's role has it)."""
    try:
        conn.execute("checkpoint")
    except psycopg.errors.InsufficientPrivilege:
        print("    (no CHECKPOINT privilege: timings include pending writes)", flush=True)


def slowest_nodes(keep: Path, top: int = 8) -> None:
    """Print the slowest dbt nodes of the last build and keep its run_results.json."""
    raw = (DBT_PROJECT / "target" / "run_results.json").read_text()
    keep.write_text(raw)
    results = json.loads(raw)["results"]
    results.sort(key=lambda r: -r["execution_time"])
    total = sum(r["execution_time"] for r in results)
    print(f"    node time {total:.1f}s; slowest:", flush=True)
    for r in results[:top]:
        print(f"    {r['execution_time']:6.1f}s  {r['unique_id']}", flush=True)


def one_size(events: int, work: Path, admin: str, template: str = "") -> dict[str, float]:
    users = max(100, int(events / (DAYS * EVENTS_PER_USER_DAY)))
    sim = work / f"sim-{users}u-{DAYS + 1}d"
    if not (sim / "manifest.json").exists():
        timed("simulate", simulate, SimConfig(users=users, days=DAYS + 1, seed=7), sim)
    folders = sorted((sim / "events").iterdir())
    last_day = f"dt={SimConfig().start.fromordinal(SimConfig().start.toordinal() + DAYS)}"
    history = [f for f in folders if f.name < last_day]
    new_day = [f for f in folders if f.name >= last_day]
    url = fresh_db(admin, f"bench_dbt_{events}")
    db.upgrade(url)
    settings = get_settings().model_copy(update={"database_url": url})
    print(f"{events:,} events target, {users:,} people:", flush=True)
    res, t_ingest = timed("ingest history", ingest_paths, history, settings=settings)
    loaded = sum(r.loaded for r in res)
    spread_loads(url)
    _, t_full = timed("dbt build --full-refresh", build, full_refresh=True, url=url, capture=True)
    slowest_nodes(work / f"dbt-{events}-full.json")
    if template:
        # a copy of the fully built database, to time incremental runs again without rebuilding
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{template}" with (force)')
            conn.execute(f'create database "{template}" template "bench_dbt_{events}"')
    timed("vacuum and checkpoint, as the day between would (untimed)", settle, url)
    timed("ingest one more day", ingest_paths, new_day, settings=settings)
    _, t_inc = timed("dbt build (incremental)", build, url=url, capture=True)
    slowest_nodes(work / f"dbt-{events}-incremental.json")
    print(
        f"  -> {loaded:,} events; full build {t_full:.1f}s; one day incremental {t_inc:.1f}s "
        f"= {t_inc / t_full:.2f} of full (target < 0.2)",
        flush=True,
    )
    return {"events": loaded, "full": t_full, "incremental": t_inc, "ingest": t_ingest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    ap.add_argument(
        "--keep-full-build",
        action="store_true",
        help="keep a copy of each fully built database (bench_dbt_<N>_full) to re-time increments",
    )
    args = ap.parse_args()
    settings = get_settings()
    work = Path(settings.home) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    admin = db.database_url(settings)
    rows = [
        one_size(n, work, admin, f"bench_dbt_{n}_full" if args.keep_full_build else "")
        for n in args.events
    ]
    print(f"\n{'events':>12}{'full build s':>14}{'incremental s':>15}{'ratio':>8}")
    for r in rows:
        print(
            f"{r['events']:>12,}{r['full']:>14.1f}{r['incremental']:>15.1f}"
            f"{r['incremental'] / r['full']:>8.2f}"
        )


if __name__ == "__main__":
    main()
