"""Benchmark: how well shop-crm measures what its messages truly did, over shops and seeds.

For each shop size and each seed, a shop is simulated (42 days, that seed), loaded and built in
its own database, and the controlled experiment of ``crm.simulate.experiment`` runs on it:
shop-crm's send times and recommendations fitted, three campaigns with a 50% holdout (a
planted conversion lift of 0.30 sent at the best hour, a planted zero sent at a fixed hour, a
lift of 0.05 linking to the recommendations), sent hourly through firebase-admin to the fake
FCM, a week of simulated reactions loaded and built. Reported per size: planted (true) against
measured uplift and incremental revenue per campaign with 95% intervals, the intervals'
coverage over all seeds, the open-rate gain of best-hour sending against the planted gain, and
the click-through and purchase rates of the recommendations row against the bestsellers row.

    python bench/loop_bench.py [--users 1500 8000] [--seeds 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingest_bench import fresh_db

from crm import db
from crm.settings import Settings, get_settings
from crm.simulate import SimConfig, experiment, simulate
from crm.simulate.truth import campaign_truth, read_reactions, recommendation_rates, send_hour_rates

DAYS = 42
START = datetime(2026, 1, 1, tzinfo=UTC)


def one(admin: str, work: Path, users: int, seed: int) -> dict[str, Any]:
    from crm.ingest.load import ingest_paths
    from crm.transform import build

    t = time.perf_counter()
    sim = work / f"sim-{users}u-{seed}"
    if not (sim / "manifest.json").exists():
        simulate(SimConfig(users=users, days=DAYS, seed=seed), sim)
    url = fresh_db(admin, "bench_loop")
    db.upgrade(url)
    settings = Settings(_env_file=None, database_url=url, home=work / "home")
    ingest_paths(sorted((sim / "events").iterdir()), settings=settings)
    build(url=url, capture=True)
    out = work / f"reactions-{users}u-{seed}"
    run = experiment.run(url, sim, out, START + timedelta(days=DAYS, hours=6))
    reactions = read_reactions(run.reactions)
    rows = campaign_truth(url, reactions)
    hours = send_hour_rates(url, reactions)
    recs = recommendation_rates(url, reactions)
    return {
        "users": users,
        "seed": seed,
        "seconds": round(time.perf_counter() - t, 1),
        "campaigns": {
            c.campaign_id: {
                "treated": c.treated,
                "held_out": c.held_out,
                "true_uplift": c.true_uplift,
                "uplift": c.uplift,
                "uplift_ci": c.uplift_ci,
                "covered": c.covered,
                "true_incremental_revenue": c.true_incremental_revenue,
                "incremental_revenue": c.incremental_revenue,
                "incremental_revenue_ci": c.incremental_revenue_ci,
                "revenue_covered": c.revenue_covered,
            }
            for c in rows
        },
        "send_hours": {k: vars(v) for k, v in hours.items()},
        "recommendations": {k: {"click": vars(a), "buy": vars(b)} for k, (a, b) in recs.items()},
    }


def report(results: list[dict[str, Any]]) -> None:
    for users in sorted({r["users"] for r in results}):
        runs = [r for r in results if r["users"] == users]
        print(f"\n## {users:,} people, {len(runs)} seeds ({DAYS} days of history each)")
        print("| campaign | treated / held out (mean) | true uplift (mean) | measured uplift "
              "(mean) | mean 95% half-width | covered | true incr. revenue (mean) | measured "
              "(mean) | revenue covered |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cid in ("offer", "nothing", "picks"):
            cs = [r["campaigns"][cid] for r in runs]
            half = statistics.mean((c["uplift_ci"][1] - c["uplift_ci"][0]) / 2 for c in cs)
            print(
                f"| {cid} | {statistics.mean(c['treated'] for c in cs):,.0f} / "
                f"{statistics.mean(c['held_out'] for c in cs):,.0f} | "
                f"{statistics.mean(c['true_uplift'] for c in cs):+.3f} | "
                f"{statistics.mean(c['uplift'] for c in cs):+.3f} | {half:.3f} | "
                f"{sum(bool(c['covered']) for c in cs)}/{len(cs)} | "
                f"{statistics.mean(c['true_incremental_revenue'] for c in cs):,.0f} | "
                f"{statistics.mean(c['incremental_revenue'] for c in cs):,.0f} | "
                f"{sum(bool(c['revenue_covered']) for c in cs)}/{len(cs)} |"
            )
        allc = [c for r in runs for c in r["campaigns"].values()]
        print(f"\nconversion intervals covering the truth: {sum(bool(c['covered']) for c in allc)}"
              f"/{len(allc)}; revenue intervals: {sum(bool(c['revenue_covered']) for c in allc)}"
              f"/{len(allc)}")  # fmt: skip
        gains = [(r["send_hours"]["best hour"], r["send_hours"]["another hour"]) for r in runs]
        print(
            "open rate, best hour against another: measured "
            f"{statistics.mean(b['measured'] for b, _ in gains):.3f} vs "
            f"{statistics.mean(o['measured'] for _, o in gains):.3f} (gain "
            f"{statistics.mean(b['measured'] - o['measured'] for b, o in gains):+.3f}); planted "
            f"{statistics.mean(b['planted'] for b, _ in gains):.3f} vs "
            f"{statistics.mean(o['planted'] for _, o in gains):.3f} (gain "
            f"{statistics.mean(b['planted'] - o['planted'] for b, o in gains):+.3f})"
        )
        for what in ("click", "buy"):
            rec = [r["recommendations"]["recommendations"][what] for r in runs]
            pop = [r["recommendations"]["bestsellers"][what] for r in runs]
            print(
                f"{what} rate per shown product, recommendations vs bestsellers: measured "
                f"{statistics.mean(x['measured'] for x in rec):.3f} vs "
                f"{statistics.mean(x['measured'] for x in pop):.3f}; planted "
                f"{statistics.mean(x['planted'] for x in rec):.3f} vs "
                f"{statistics.mean(x['planted'] for x in pop):.3f} "
                f"({sum(x['n'] for x in rec):,} shown per row in all)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1500, 8000])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=101)
    args = parser.parse_args()
    settings = get_settings()
    work = Path(settings.home) / "bench" / "loop"
    work.mkdir(parents=True, exist_ok=True)
    admin = db.database_url(settings)
    results = []
    for users in args.users:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = one(admin, work, users, seed)
            c = r["campaigns"]
            print(f"{users:,} people, seed {seed}: {r['seconds']:.0f} s; uplift true/measured "
                  + ", ".join(f"{k} {v['true_uplift']:+.3f}/{v['uplift']:+.3f}"
                              f"{'' if v['covered'] else ' (missed)'}" for k, v in c.items()),
                  flush=True)  # fmt: skip
            results.append(r)
            name = "results-" + "-".join(map(str, args.users)) + ".json"
            (work / name).write_text(json.dumps(results, indent=1, default=str))
    report(results)


if __name__ == "__main__":
    main()
