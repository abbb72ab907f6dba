"""The ``crm`` command line: each step of the pipeline, by hand. DAG tasks call the same code."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crm.errors import CrmError

if TYPE_CHECKING:
    from crm.settings import Settings
    from notify.campaigns import Campaign

app = typer.Typer(
    help="shop-crm: customer engagement on your own PostgreSQL.", no_args_is_help=True
)
db_app = typer.Typer(help="Database: migrations and the embedded server.", no_args_is_help=True)
contract_app = typer.Typer(help="The event contract.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(contract_app, name="contract")
import_app = typer.Typer(
    help="Turn public e-commerce logs into event files of the contract (then `crm ingest`).",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")
campaigns_app = typer.Typer(help="Campaign files in campaigns/.", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")
privacy_app = typer.Typer(help="Data subjects' rights: export and erase.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
mlflow_app = typer.Typer(help="The MLflow tracking server's users.", no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")
sources_app = typer.Typer(
    help="Sources of the HTTP collector (crm collect) and their write keys.", no_args_is_help=True
)
app.add_typer(sources_app, name="sources")
journeys_app = typer.Typer(
    help="Event-triggered journeys: campaigns whose schedule names an event.",
    no_args_is_help=True,
)
app.add_typer(journeys_app, name="journeys")
CAMPAIGNS = Path("campaigns")
console = Console(stderr=True, soft_wrap=True)  # errors keep paths whole: no hard wraps
COUNTS = ("lines", "loaded", "duplicates", "rejected")
out = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path(
        ".crm/landing"
    ),
    users: Annotated[int, typer.Option(min=1, help="People in the simulated shop.")] = 2_000,
    days: Annotated[int, typer.Option(min=1, help="Days of traffic.")] = 60,
    seed: Annotated[int, typer.Option(help="Same seed, same output.")] = 42,
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")] = "2026-01-01",
    products: Annotated[int | None, typer.Option(min=12, help="Catalog size.")] = None,
    no_gzip: Annotated[bool, typer.Option("--no-gzip", help="Write plain .jsonl.")] = False,
) -> None:
    """Write simulated shop traffic (events, catalog, ground truth) into OUT."""
    from crm.simulate import SimConfig
    from crm.simulate import simulate as run

    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise typer.BadParameter(f"--start {start!r} is not a YYYY-MM-DD date") from None
    cfg = SimConfig(
        users=users, days=days, seed=seed, start=first, products=products, gzip=not no_gzip
    )
    with _progress() as bar:
        task = bar.add_task("simulating days", total=days)
        summary = run(cfg, out_dir, progress=lambda d: bar.update(task, completed=d + 1))
    out.print(
        f"wrote {summary.events:,} events ({summary.duplicates:,} retried duplicates, "
        f"{summary.late:,} late) in {summary.files} daily files, {summary.orders:,} orders, "
        f"{summary.users:,} people -> {out_dir}"
    )


@app.command()
def react(
    shop: Annotated[Path, typer.Option(help="The simulated shop to continue.")] = Path(
        ".crm/landing"
    ),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path(
        ".crm/reactions"
    ),
    days: Annotated[int, typer.Option(min=1, help="Days after the history to simulate.")] = 5,
    seed: Annotated[int | None, typer.Option(help="Seed of the reactions (the shop's).")] = None,
    effects: Annotated[
        Path | None, typer.Option(help="Planted effects (JSON, as ground_truth/effects.json).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Simulate again over an earlier output.")] = False,
) -> None:
    """Continue a simulated shop after its history: everyone goes on on their baseline and
    reacts to what shop-crm delivered (crm.deliveries) with planted effects; writes the days'
    events and the truth into OUT."""
    import orjson

    from crm import db
    from crm.simulate.react import PlantedEffects
    from crm.simulate.react import react as run

    if (out_dir / "manifest.json").exists() and not force:
        out.print(f"reactions already simulated in {out_dir} (kept, so its truth stays the one "
                  "loaded; --force simulates again)")  # fmt: skip
        return
    planted = PlantedEffects.from_dict(orjson.loads(effects.read_bytes())) if effects else None
    with _progress() as bar:
        task = bar.add_task("replaying the history", total=None)
        summary = run(shop, db.database_url(), out_dir, days, seed, planted,
                      progress=lambda d: bar.update(task, completed=d + 1))  # fmt: skip
    out.print(
        f"wrote {summary.events:,} events over {days} days after the history: "
        f"{summary.deliveries:,} deliveries read, {summary.received:,} received, "
        f"{summary.opened:,} opened, {summary.caused_orders:,} orders caused -> {out_dir}"
    )


@app.command()
def effects(
    truth: Annotated[Path, typer.Option(help="Output of `crm react`.")] = Path(".crm/reactions"),
) -> None:
    """Each campaign's measured uplift (marts.campaign_performance, 95% interval) beside the
    true one the simulated reactions caused; open rates by send hour and recommendation
    click-through, measured and planted."""
    from crm import db
    from crm.simulate import truth as t

    url = db.database_url()
    reactions = t.read_reactions(truth)
    wide = Console(width=max(out.width, 150))  # nine columns: not squeezed into a log's 80
    title = "conversion uplift and incremental revenue: true against measured"
    table = Table("campaign", "treated", "held out", "true uplift", "measured [95%]", "in",
                  "true incr. revenue", "measured [95%]", "in", title=title)  # fmt: skip
    for c in t.campaign_truth(url, reactions):
        ci = (
            f"{c.uplift:+.3f} [{c.uplift_ci[0]:+.3f}, {c.uplift_ci[1]:+.3f}]"
            if c.uplift_ci and c.uplift is not None
            else "-"
        )
        rev = (
            f"{c.incremental_revenue:,.0f} [{c.incremental_revenue_ci[0]:,.0f}, "
            f"{c.incremental_revenue_ci[1]:,.0f}]"
            if c.incremental_revenue_ci and c.incremental_revenue is not None
            else "-"
        )
        mark = {True: "yes", False: "NO", None: "-"}
        table.add_row(c.campaign_id, f"{c.treated:,}", f"{c.held_out:,}", f"{c.true_uplift:+.3f}",
                      ci, mark[c.covered], f"{c.true_incremental_revenue:,.0f}", rev,
                      mark[c.revenue_covered])  # fmt: skip
    wide.print(table)
    title = "send time: open rate at the customer's best hour (ml.send_times)"
    hours = Table("pushes sent", "sent", "opened (measured)", "planted", title=title)
    for name, r in sorted(t.send_hour_rates(url, reactions).items()):
        hours.add_row(name, f"{r.n:,}", f"{r.measured:.3f}", f"{r.planted:.3f}")
    wide.print(hours)
    title = "recommendations screen: the customer's recommendations against bestsellers"
    recs = Table("row shown", "products shown", "clicked (measured)", "planted",
                 "bought (measured)", "planted", title=title)  # fmt: skip
    for name, (clicks, bought) in t.recommendation_rates(url, reactions).items():
        recs.add_row(name, f"{clicks.n:,}", f"{clicks.measured:.3f}", f"{clicks.planted:.3f}",
                     f"{bought.measured:.3f}", f"{bought.planted:.3f}")  # fmt: skip
    wide.print(recs)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Event files or folders of them.")],
    source: Annotated[str, typer.Option(help="Recorded in the load audit.")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    summary: Annotated[
        bool, typer.Option("--summary", help="Print the totals only, not a row per file.")
    ] = False,
) -> None:
    """Load event files (JSON Lines, optionally gzip) into raw.events."""
    from crm.ingest.files import expand
    from crm.ingest.load import ingest_paths

    files = expand(paths)
    with _progress() as bar:
        task = bar.add_task("ingesting files", total=len(files))
        results = ingest_paths(files, source=source, on_file=lambda _: bar.advance(task))
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {k: str(v) if isinstance(v, Path) else v for k, v in vars(r).items()}
                    for r in results
                ]
            )
        )
    else:
        table = Table("file", "status", "lines", "loaded", "duplicates", "rejected", "seconds")
        for r in [] if summary and len(results) > 1 else results:
            status = f"skipped (load {r.skipped_as})" if r.skipped else r.status
            counts = (f"{getattr(r, k):,}" for k in COUNTS)
            table.add_row(
                f"{r.path.parent.name}/{r.path.name}", status, *counts, f"{r.seconds:.2f}"
            )
        if len(results) > 1:
            if table.row_count:
                table.add_section()
            table.add_row(
                f"{len(results)} files", f"{sum(r.skipped for r in results)} skipped",
                *(f"{sum(getattr(r, k) for r in results):,}" for k in COUNTS),
                f"{sum(r.seconds for r in results):.1f}",
            )  # fmt: skip
        out.print(table)
        for r in results:
            if r.message:
                console.print(f"[yellow]{r.path}: {r.message}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def transform(
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="Rebuild incremental models from scratch.")
    ] = False,
    select: Annotated[str | None, typer.Option(help="dbt selector, e.g. +dim_customers.")] = None,
    test_all_rows: Annotated[
        bool,
        typer.Option(
            "--test-all-rows",
            help="Test every row of event-sized tables (incremental runs test the new loads).",
        ),
    ] = False,
) -> None:
    """Build and test the dbt project (the same build the Airflow DAG runs)."""
    from crm.transform import build

    build(
        full_refresh=full_refresh,
        select=select,
        dbt_vars={"test_all_rows": True} if test_all_rows else None,
    )


@app.command()
def status() -> None:
    """What has landed in raw.events, file by file status, and why lines were rejected."""
    from crm.report import status as read_status

    s = read_status()
    files = Table("file status", "files", "lines", "loaded", "duplicates", "rejected")
    for st, n, lines, loaded, dups, rejected in s.files:
        files.add_row(st, f"{n:,}", f"{lines:,}", f"{loaded:,}", f"{dups:,}", f"{rejected:,}")
    out.print(files)
    out.print(
        f"raw.events: {s.events:,} events from {s.first_day} to {s.last_day}; "
        f"{s.users:,} known users, {s.identities:,} distinct user or anonymous ids"
    )
    kinds = Table("event", "count", title="most frequent events")
    for kind, n in s.kinds:
        kinds.add_row(kind, f"{n:,}")
    out.print(kinds)
    if s.reasons:
        reasons = Table("reason", "lines", title="rejected lines (raw.rejected_events)")
        for reason, n in s.reasons:
            reasons.add_row(reason, f"{n:,}")
        out.print(reasons)


@app.command()
def segments(
    days: Annotated[int, typer.Option(min=1, help="Show moves over this many days.")] = 7,
) -> None:
    """Lifecycle segment sizes (marts.dim_customers) and how customers moved between them."""
    from crm.report import segments as read_segments

    sizes, moves = read_segments(days=days)
    table = Table("segment", "customers", "known", "push consent", "revenue", title="lifecycle")
    for seg, n, known, push, revenue in sizes:
        table.add_row(seg, f"{n:,}", f"{known:,}", f"{push:,}", f"{revenue:,.2f}")
    out.print(table)
    if moves:
        moved = Table("from", "to", "customers", title=f"moves over the last {days} days")
        for before, after, n in moves:
            moved.add_row(before, after, f"{n:,}")
        out.print(moved)


@app.command()
def train(
    task: Annotated[
        list[str] | None, typer.Option("--task", help="Only this task (repeatable).")
    ] = None,
    churn_window_days: Annotated[int, typer.Option(min=1, help="Churn label window.")] = 14,
    recommendations: Annotated[int, typer.Option(min=1, help="Recommendations per customer.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the ML models as MLflow runs; each becomes champion only if it beats the last."""
    from ml.jobs import TASKS, TrainParams
    from ml.jobs import train as run

    params = TrainParams(churn_window_days=churn_window_days, recommendations=recommendations,
                         seed=seed)  # fmt: skip
    with console.status("training (segments, churn, send time, recommendations, value)"):
        results = run(tuple(task or TASKS), params)
    from crm.display import training_tables

    for heading, table in training_tables(results):
        out.print(heading)
        if table.row_count:
            out.print(table)
    out.print("* decides the champion: a new version replaces it only if it does better")


@app.command()
def score(
    shards: Annotated[
        int | None,
        typer.Option(
            help="Shards (default CRM_SCORE_SHARDS, or one per "
            "CRM_SCORE_SHARD_CUSTOMERS customers).",
            min=1,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes scoring shards at once.", min=1)] = 1,
) -> None:
    """Score every customer with the champions, in shards; publish to ml.* and Redis (the
    ml.* tables swapped at once when every shard has scored)."""
    from ml.jobs import score as run

    with console.status("scoring customers") as status:
        result = run(
            shards=shards,
            workers=workers,
            progress=lambda msg: status.update(f"scoring customers: {msg}"),
        )
    scored_at = datetime.fromisoformat(str(result["scored_at"])).astimezone(UTC)
    table = Table("table", "rows", title=f"scores published {scored_at:%Y-%m-%d %H:%M} UTC")
    for name, n in result["rows"].items():
        table.add_row(f"ml.{name}", f"{n:,}")
    out.print(table)
    models = ", ".join(f"{task} {ref}" for task, ref in result["models"].items())
    out.print(
        f"Redis: {result['redis_keys']:,} customer keys. Champions used: {models}. "
        f"Shards: {result['shards']} (job {result['job_id']})."
    )


@app.command()
def evaluate(
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path(
        ".crm/reports/evaluation"
    ),
    data: Annotated[
        Path | None,
        typer.Option(help="Public datasets (default CRM_EVAL_DATA or ~/.cache/shop-crm-data)."),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="Simulator ground truth (ground_truth/users.jsonl) for segment ARI."),
    ] = None,
) -> None:
    """Offline evaluation of every model on time splits; writes a markdown report with plots."""
    import pandas as pd

    from ml.data import load_snapshot
    from ml.datasets import data_dir
    from ml.evaluate import run

    data = data or data_dir()
    gt = None
    if truth:
        gt = pd.read_json(truth, lines=True).dropna(subset=["user_id"]).set_index("user_id")
    with console.status("evaluating (project data, CDNOW, MovieLens)"):
        report = run(load_snapshot(), out_dir, data, gt)
    out.print(f"wrote {report}")


def _imported(summary: object, out_dir: Path) -> None:
    from crm.importers import ImportSummary

    assert isinstance(summary, ImportSummary)
    out.print(
        f"{summary.source}: {summary.events:,} events in {summary.files:,} daily files under "
        f"{out_dir / 'events'}"
    )
    for reason, n in summary.skipped.most_common():
        out.print(f"  skipped {n:,}: {reason}")
    out.print(f"next: crm ingest {out_dir / 'events'}/dt=*")


OutOption = Annotated[
    Path | None, typer.Option("--out", help="Landing folder (default: CRM_LANDING_DIR).")
]


@import_app.command("cdnow")
def import_cdnow(
    path: Annotated[
        Path | None,
        typer.Argument(help="CDNOW_master.txt (default: ~/.cache/shop-crm-data, fetch.sh)."),
    ] = None,
    out_dir: OutOption = None,
) -> None:
    """CDNOW purchases (1997-98) -> Order Completed events. Ingesting them needs
    CRM_INGEST_MIN_TIMESTAMP=1990-01-01T00:00:00Z."""
    from crm.importers import import_cdnow as run
    from crm.settings import get_settings
    from ml.datasets import data_dir

    path = path or data_dir() / "CDNOW_master.txt"
    if not path.exists():
        raise CrmError(f"{path} not found: run ../shared/data/fetch.sh or pass the file")
    target = out_dir or get_settings().landing_dir
    _imported(run(path, target), target)


@import_app.command("retailrocket")
def import_retailrocket(
    path: Annotated[Path, typer.Argument(help="RetailRocket events.csv.")],
    out_dir: OutOption = None,
) -> None:
    """RetailRocket views, cart adds and transactions -> product and order events."""
    from crm.importers import import_retailrocket as run
    from crm.settings import get_settings

    target = out_dir or get_settings().landing_dir
    _imported(run(path, target), target)


@import_app.command("online-retail")
def import_online_retail(
    path: Annotated[Path, typer.Argument(help="UCI Online Retail II (.csv or .xlsx).")],
    out_dir: OutOption = None,
) -> None:
    """UCI Online Retail II invoices -> one Order Completed per invoice."""
    from crm.importers import import_online_retail as run
    from crm.settings import get_settings

    target = out_dir or get_settings().landing_dir
    _imported(run(path, target), target)


@campaigns_app.command("validate")
def campaigns_validate(
    folder: Annotated[Path, typer.Argument(help="Folder of campaign YAML files.")] = CAMPAIGNS,
) -> None:
    """Check every campaign file; list each mistake with its file and field."""
    from notify.campaigns import load_campaigns

    table = Table("campaign", "audience", "channels", "schedule", "holdout", "ends")
    for c in load_campaigns(folder):
        who = ", ".join(c.audience.lifecycle) or "everyone"
        sched = c.schedule.cron or c.schedule.trigger or c.schedule.event or str(c.schedule.at)
        table.add_row(c.id, who, ", ".join(c.channels), f"{c.schedule.kind}: {sched}",
                      f"{c.holdout_percent:g}%", str(c.end_date))  # fmt: skip
    out.print(table)


@campaigns_app.command("audience")
def campaigns_audience(
    campaign_id: Annotated[str, typer.Argument(help="The campaign's id (its file name).")],
    folder: Annotated[Path, typer.Option(help="Folder of campaign files.")] = CAMPAIGNS,
    hours: Annotated[
        float, typer.Option(help="Journeys: who would have entered from this many hours of events.")
    ] = 24.0,
) -> None:
    """Preview who a campaign would reach now (nothing is recorded); for a journey, who would
    have entered it from the last --hours of events (the pipeline's clock), and where each would
    stand now."""
    from crm import db
    from notify.audience import select_audience
    from notify.campaigns import find_campaign
    from notify.journeys import is_journey

    campaign = find_campaign(folder, campaign_id)
    if is_journey(campaign):
        _journey_audience(campaign, hours)
        return
    with db.connect() as conn:
        frame = select_audience(conn, campaign, now=db.clock())
    table = Table("lifecycle segment", "customers", "held out", "push consent",
                  title=f"{campaign.name}: {len(frame):,} customers")  # fmt: skip
    for seg, part in frame.groupby("lifecycle_segment"):
        table.add_row(str(seg), f"{len(part):,}", f"{int(part.held_out.sum()):,}",
                      f"{int(part.push_consent.sum()):,}")  # fmt: skip
    out.print(table)


def _journey_audience(campaign: Campaign, hours: float) -> None:
    from collections import Counter

    from crm import db
    from notify.journeys import preview

    now = db.clock()
    with db.connect() as conn:
        rows = preview(conn, campaign, hours, now)
    counts: Counter[str] = Counter()
    for r in rows:
        state = "due" if r["due"] else "waiting"
        if not r["known"]:
            state = "not built yet"
        if r["held_out"]:
            state = "held out"
        counts["exited" if r["exited"] else state] += 1
    customers = len({r["customer_id"] for r in rows})
    out.print(
        f"{campaign.name} ({campaign.id}): {len(rows):,} {campaign.schedule.event} events"
        f" of {customers:,} customers in the {hours:g} hours before {now:%Y-%m-%d %H:%M}"
    )
    table = Table("would stand", "entries")
    for state in ("waiting", "due", "exited", "held out", "not built yet"):
        table.add_row(state, f"{counts[state]:,}")
    out.print(table)


@campaigns_app.command("run")
def campaigns_run(
    at: Annotated[
        datetime | None, typer.Option(help="Run as of this time (ISO, UTC if no zone).")
    ] = None,
    campaign: Annotated[
        list[str] | None, typer.Option(help="Only these campaigns (repeatable).")
    ] = None,
    launch: Annotated[
        list[str] | None, typer.Option(help="Launch these now, whatever their schedule.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Plan and render, show samples; record and send nothing.")
    ] = False,
    hours: Annotated[
        float,
        typer.Option(help="Dry run of a journey: plan who entered from this many hours of events."),
    ] = 24.0,
    send: Annotated[bool, typer.Option(help="Send what is due after planning.")] = True,
    fake_fcm: Annotated[
        bool, typer.Option(help="Send pushes to a local fake FCM started for this run.")
    ] = False,
    until: Annotated[
        datetime | None,
        typer.Option(
            help="Catch up: run again every hour after --at up to this time, as the hourly "
            "DAG would have (the pipeline's clock follows each run)."
        ),
    ] = None,
    folder: Annotated[Path, typer.Option(help="Folder of campaign files.")] = CAMPAIGNS,
) -> None:
    """One delivery run, as the hourly send_campaigns DAG does it: plan due campaigns, then
    send due deliveries."""
    from contextlib import ExitStack

    from crm import db
    from crm.settings import get_settings
    from notify.run import RunReport, choose, run

    settings = get_settings()
    url = db.database_url()
    db.upgrade(url)
    now = (at or db.clock(url)).replace(tzinfo=(at.tzinfo if at and at.tzinfo else UTC))
    if until is not None and (dry_run or launch):
        raise typer.BadParameter("--until catches up scheduled runs: not with --dry-run, --launch")
    last = until.replace(tzinfo=until.tzinfo or UTC) if until is not None else now
    campaigns, launched = choose(folder, campaign, launch)
    with ExitStack() as stack:
        if fake_fcm:
            settings = _with_fake_fcm(stack, settings)
        report = RunReport(dry_run=dry_run)
        tick = now
        while tick <= last:
            if until is not None:
                db.set_clock(url, tick)
            one = run(url, tick, campaigns, launched, launched_by="cli", dry_run=dry_run,
                      send=send, settings=settings, hours=hours)  # fmt: skip
            for cid, counts in one.planned.items():
                into = report.planned.setdefault(cid, {})
                for k, v in counts.items():
                    into[k] = into.get(k, 0) + v
            for k, v in one.sent.items():
                report.sent[k] = report.sent.get(k, 0) + v
            report.samples |= one.samples
            tick += timedelta(hours=1)
    if until is not None:
        now = last
    journeys = any("entries" in counts for counts in report.planned.values())
    table = Table("campaign", *(("entered", "exited") if journeys else ()), "planned",
                  "held out", "suppressed",
                  title=f"campaigns as of {now:%Y-%m-%d %H:%M} UTC"
                  + (" (dry run: nothing recorded)" if dry_run else ""))  # fmt: skip
    for cid, counts in report.planned.items():
        entry = [f"{counts.get(k, 0):,}" for k in ("entries", "exited")] if journeys else []
        states = [f"{counts.get(k, 0):,}" for k in ("planned", "held_out", "suppressed")]
        table.add_row(cid, *entry, *states)
    out.print(table if report.planned else f"no campaign due at {now:%Y-%m-%d %H:%M} UTC")
    for cid, samples in report.samples.items():
        for s in samples[:2]:
            out.print(f"[bold]{cid}[/bold] {s['variant']} via {s['channel']} at "
                      f"{s['slot']:%Y-%m-%d %H:%M} UTC: {s['title']} / {s['body']}")  # fmt: skip
    _print_sent(report.sent)


def _with_fake_fcm(stack: contextlib.ExitStack, settings: Settings) -> Settings:
    """``settings`` sending pushes to a local fake FCM that lives as long as ``stack``."""
    from notify.fake_fcm import FakeFcm

    fake = stack.enter_context(FakeFcm())
    return settings.model_copy(update={"fcm_endpoint": fake.endpoint, "fcm_ca_file": fake.ca_file})


def _print_sent(sent: dict[str, int]) -> None:
    if sent:
        out.print("deliveries: " + ", ".join(f"{v:,} {k}" for k, v in sorted(sent.items())))


def _journeys_step(folder: Path, at: datetime | None, send: bool, settings: Settings) -> None:
    from crm import db
    from notify.journeys import step
    from notify.run import select_campaigns, send_now

    url = db.database_url()
    now = at.replace(tzinfo=at.tzinfo or UTC) if at else None
    report = step(url, select_campaigns(folder), now, settings)
    for cid, counts in report.journeys.items():
        shown = {k: v for k, v in counts.items() if v and k != "waiting"}
        if shown:
            out.print(f"{cid}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(shown.items()))
                      + f"; waiting {counts.get('waiting', 0):,}")  # fmt: skip
    if send:
        _print_sent(send_now(url, settings, now))


@journeys_app.command("run")
def journeys_run(
    interval: Annotated[float, typer.Option(help="Seconds between steps.")] = 5.0,
    once: Annotated[bool, typer.Option(help="One step, then stop.")] = False,
    at: Annotated[
        datetime | None, typer.Option(help="With --once: step as of this time (ISO, UTC).")
    ] = None,
    send: Annotated[bool, typer.Option(help="Send what is due after each step.")] = True,
    fake_fcm: Annotated[
        bool, typer.Option(help="Send pushes to a local fake FCM started for this run.")
    ] = False,
    folder: Annotated[Path, typer.Option(help="Folder of campaign files.")] = CAMPAIGNS,
    heartbeat: Annotated[
        Path | None, typer.Option(help="Touch this file after each step (for health checks).")
    ] = None,
) -> None:
    """Evaluate the journeys as loads land: enter customers on their trigger events, cancel
    on exit events, plan and send what is due. Runs until stopped (Ctrl-C), or --once."""
    import time
    from contextlib import ExitStack

    import psycopg

    from crm import db
    from crm.settings import get_settings

    settings = get_settings()
    db.upgrade(db.database_url())
    with ExitStack() as stack:
        if fake_fcm:
            settings = _with_fake_fcm(stack, settings)
        if once:
            _journeys_step(folder, at, send, settings)
            return
        console.print(f"journeys: a step every {interval:g} s (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                started = time.monotonic()
                try:
                    _journeys_step(folder, None, send, settings)
                    if heartbeat is not None:
                        heartbeat.touch()
                except (CrmError, psycopg.Error) as exc:  # a bad campaign file, or the
                    # database away or not built yet: say so, keep going
                    console.print(f"[red]{exc}[/red]")
                time.sleep(max(0.0, interval - (time.monotonic() - started)))


@journeys_app.command("pause")
def journeys_pause(
    campaign_id: Annotated[str, typer.Argument(help="The journey's campaign id.")],
) -> None:
    """Pause a journey and its follow-up steps: nobody enters, nothing is planned, until it is
    resumed."""
    _journey_pause(campaign_id, True)


@journeys_app.command("resume")
def journeys_resume(
    campaign_id: Annotated[str, typer.Argument(help="The journey's campaign id.")],
) -> None:
    """Resume a paused journey (entries more than max_late_hours overdue expire)."""
    _journey_pause(campaign_id, False)


def _journey_pause(campaign_id: str, paused: bool, folder: Path = CAMPAIGNS) -> None:
    from crm import db
    from notify.journeys import set_paused, steps_of
    from notify.run import select_campaigns

    ids = steps_of(select_campaigns(folder), campaign_id) or [campaign_id]
    with db.connect() as conn:
        if not set_paused(conn, ids, paused, by="cli"):
            raise CrmError(f"no journey {campaign_id!r} has started (crm journeys run starts it)")
    out.print(f"{', '.join(ids)}: {'paused' if paused else 'resumed'}")


@journeys_app.command("status")
def journeys_status(
    folder: Annotated[Path, typer.Option(help="Folder of campaign files.")] = CAMPAIGNS,
) -> None:
    """Each journey step: paused or running, its entries by state, and the loads older than
    10 minutes it has not read (the journeys process is down or stuck)."""
    from crm import db
    from notify.journeys import control
    from notify.run import select_campaigns

    state = control(db.database_url(), select_campaigns(folder))
    table = Table("journey", "state", "entries", "loads behind")
    for cid, row in sorted(state.items()):
        entries = ", ".join(f"{k} {v:,}" for k, v in sorted(row["entries"].items()))
        table.add_row(cid, "paused" if row["paused"] else "running", entries,
                      f"{row['loads behind']:,}")  # fmt: skip
    out.print(table)


@campaigns_app.command("suppress")
def campaigns_suppress(
    customer_id: Annotated[str, typer.Argument(help="The customer never to contact.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the entry; needed to add).")] = "",
    channel: Annotated[str, typer.Option(help="push, email, ... or * for every channel.")] = "*",
    remove: Annotated[bool, typer.Option("--remove", help="Take the entry off the list.")] = False,
) -> None:
    """Add a customer to the suppression list (or take them off it)."""
    from crm import db
    from notify import suppressions

    db.upgrade()
    with db.connect() as conn:
        if remove:
            done = suppressions.remove(conn, customer_id, channel)
            out.print("removed" if done else "was not on the list")
        else:
            try:
                new = suppressions.add(conn, customer_id, reason, channel)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            out.print("suppressed" if new else "already suppressed; reason updated")
        conn.commit()


@privacy_app.command("export")
def privacy_export(
    customer: Annotated[str, typer.Argument(help="A customer, user or anonymous id.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here (default: stdout).")
    ] = None,
) -> None:
    """Everything held about a person, across every identifier stitched to them, as JSON."""
    from crm import db, privacy
    from crm.settings import get_settings
    from ml.publish import redis_client

    settings = get_settings()
    db.upgrade()
    with db.connect() as conn:
        document = privacy.export(conn, customer, redis_client(settings), settings.redis_prefix)
    text = privacy.to_json(document)
    if out_file:
        out_file.write_text(text)
        out_file.chmod(0o600)
        tables = len(document["tables"])
        console.print(f"wrote {out_file}: {len(document['identifiers'])} identifiers, "
                      f"rows from {tables} tables")  # fmt: skip
    else:
        print(text)


@privacy_app.command("erase")
def privacy_erase(
    customer: Annotated[str, typer.Argument(help="A customer, user or anonymous id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """Remove a person everywhere for good (idempotent), and report what was removed."""
    from crm import db, privacy
    from crm.settings import get_settings
    from ml.publish import redis_client

    if not yes:
        raise typer.BadParameter("erasure cannot be undone: add --yes")
    settings = get_settings()
    db.upgrade()
    with db.connect() as conn:
        done = privacy.erase(conn, customer, redis_client(settings), settings.redis_prefix,
                             privacy.dashboard_cache(settings))  # fmt: skip
    table = Table("where", "rows", title=f"erased {done.identifiers} identifiers")
    for where, n in sorted(done.rows.items()):
        table.add_row(where, f"{n:,}")
    table.add_row("redis keys", str(done.redis_keys))
    table.add_row("dashboard cache keys", str(done.dashboard_cache_keys))
    table.add_row("earlier export files", str(done.export_files))
    out.print(table)


@privacy_app.command("retention")
def privacy_retention() -> None:
    """Drop raw events (whole day partitions) and quarantined lines older than
    CRM_RAW_RETENTION_DAYS."""
    from crm import db, privacy
    from crm.settings import get_settings

    days = get_settings().raw_retention_days
    db.upgrade()
    with db.connect() as conn:
        done = privacy.apply_retention(conn, days, date.today())
    out.print(f"kept {days} days: dropped {done['partitions_dropped']} day partitions, "
              f"{done['rejected_deleted']} quarantined lines, "
              f"{done['contact_traits_superseded']} superseded contact details")  # fmt: skip


@mlflow_app.command("provision")
def mlflow_provision(
    reader: Annotated[
        list[str] | None,
        typer.Option(help="An existing MLflow user to give read access (repeatable)."),
    ] = None,
) -> None:
    """On an MLflow server with basic auth (CRM_MLFLOW_TRACKING_URI), as its admin
    (MLFLOW_TRACKING_USERNAME / _PASSWORD): the experiment, the registered models, the
    training job's user (may register and promote) and the scoring job's (read only)."""
    import os

    from crm.errors import CrmError
    from crm.settings import get_settings
    from ml.auth import provision

    settings = get_settings()
    admin = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    jobs = {
        "train": (settings.mlflow_train_username, settings.mlflow_train_password),
        "score": (settings.mlflow_score_username, settings.mlflow_score_password),
    }
    missing = [k for k, (u, p) in jobs.items() if not (u and p)]
    if not settings.mlflow_tracking_uri or not all(admin) or missing:
        raise CrmError(
            "needs CRM_MLFLOW_TRACKING_URI, the admin's MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, and CRM_MLFLOW_TRAIN_USERNAME / _PASSWORD and "
            "CRM_MLFLOW_SCORE_USERNAME / _PASSWORD"
        )
    users = {k: (str(u), p.get_secret_value()) for k, (u, p) in jobs.items() if u and p}
    roles = provision(
        settings.mlflow_tracking_uri,
        (str(admin[0]), str(admin[1])),
        experiment=settings.mlflow_experiment,
        readers=reader or [],
        **users,
    )
    for user, permission in roles.items():
        out.print(f"{user}: {permission} on the experiment and every crm_<task> model")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (idempotent)."""
    from crm import db

    applied = db.upgrade()
    if not applied:
        out.print("schema up to date")
    else:
        span = applied[0] if len(applied) == 1 else f"{applied[0]} ... {applied[-1]}"
        out.print(f"applied {len(applied)} migration(s): {span}")


@db_app.command("clock")
def db_clock(
    at: Annotated[
        datetime | None,
        typer.Option(help="Set the pipeline's 'now' to this instant (UTC if no zone)."),
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Return to the wall clock.")] = False,
) -> None:
    """The pipeline's 'now' for dashboards and marts (crm.now()): the wall clock, or an
    instant of a simulated shop or a restored backup."""
    from crm import db

    url = db.database_url()
    db.upgrade(url)
    if reset:
        db.set_clock(url, None)
    elif at is not None:
        db.set_clock(url, at if at.tzinfo else at.replace(tzinfo=UTC))
    with db.connect(url) as conn:
        row = conn.execute("select crm.now(), current_setting('crm.now', true)").fetchone()
    assert row is not None
    source = "set with crm db clock --at" if row[1] else "the wall clock"
    out.print(f"the pipeline's now: {row[0].astimezone(UTC):%Y-%m-%d %H:%M} UTC ({source})")


@db_app.command("reader-url")
def db_reader_url(
    user: Annotated[str, typer.Option(help="The login role to create or update.")] = "crm_superset",
) -> None:
    """Create (or update) a read-only login role for dashboards and print its URL. The password
    is CRM_READER_PASSWORD, or one generated once and kept in CRM_HOME/superset/."""
    from crm import db

    url = db.database_url()
    db.upgrade(url)
    print(db.ensure_reader(url, user, db.reader_password(user)))


@db_app.command("url")
def db_url() -> None:
    """Print the database URL in use (starting the embedded server when needed)."""
    from crm import db

    out.print(db.database_url(), soft_wrap=True)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server."""
    from crm import db

    out.print("stopped" if db.stop_embedded() else "embedded server was not running")


@app.command()
def collect(
    host: Annotated[str | None, typer.Option(help="Listen address (CRM_COLLECT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (CRM_COLLECT_PORT).")] = None,
    loader: Annotated[
        bool, typer.Option(help="Load what is collected into raw.events in a second process.")
    ] = True,
) -> None:
    """Serve Segment's HTTP Tracking API: trackers send here, events reach raw.events within
    seconds. Runs until stopped (Ctrl-C)."""
    from crm.collect.server import serve, spool_dir
    from crm.settings import get_settings

    settings = get_settings()
    where = f"{host or settings.collect_host}:{settings.collect_port if port is None else port}"
    console.print(f"collecting on http://{where} (spool {spool_dir(settings)}); Ctrl-C stops")
    serve(settings, host=host, port=port, with_loader=loader)


@app.command("collect-load")
def collect_load() -> None:
    """Load what collectors spooled (for collectors started with --no-loader); until stopped."""
    from crm.collect.server import run_loader

    run_loader()


@app.command()
def tail(
    source: Annotated[
        str | None, typer.Option(help="Only this source (a collector source, or a load's).")
    ] = None,
) -> None:
    """Show calls as they arrive: accepted, or quarantined with the reason (Ctrl-C stops)."""
    from crm.collect.tail import Call, follow

    def show(c: Call) -> None:
        at = f"{c.loaded_at:%H:%M:%S}"
        if c.rejected:
            out.print(f"{at} {c.source} [red]rejected[/red] {c.rejected}: {c.message_id}",
                      markup=True, highlight=False, soft_wrap=True)  # fmt: skip
        else:
            who = c.user_id or f"anon {c.anonymous_id}"
            what = f"{c.type} {c.event or ''}".strip()
            out.print(f"{at} {c.source} [green]accepted[/green] {what} {who} {c.message_id}",
                      markup=True, highlight=False, soft_wrap=True)  # fmt: skip

    console.print("following new loads (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        follow(show, source)


@sources_app.command("add")
def sources_add(
    name: Annotated[str, typer.Argument(help="e.g. web, ios, backend.")],
    origin: Annotated[
        list[str] | None,
        typer.Option(help="Browser origin allowed to send (repeatable); none: any."),
    ] = None,
    rate_limit: Annotated[
        int | None,
        typer.Option(help="Calls a second (0: none). Default: CRM_COLLECT_RATE_LIMIT."),
    ] = None,
) -> None:
    """Create a source; its write key is the last line printed (shown only now)."""
    from crm import db
    from crm.collect import sources

    url = db.database_url()
    db.upgrade(url)
    key = sources.add(url, name, origin, rate_limit)
    console.print(f"source {name} added; its write key (keep it, it is not shown again):")
    print(key)


@sources_app.command("list")
def sources_list() -> None:
    """Sources, the first characters of their keys, origins, and whether revoked."""
    from crm import db
    from crm.collect import sources
    from crm.settings import get_settings

    url = db.database_url()
    db.upgrade(url)
    default = get_settings().collect_rate_limit
    table = Table("source", "key", "origins", "calls/s", "created", "revoked")
    for s in sources.list_sources(url):
        limit = default if s.rate_limit is None else s.rate_limit
        table.add_row(
            s.name,
            f"{s.key_hint}…",
            ", ".join(s.origins) or "any",
            (f"{limit:,}" if limit else "no limit")
            + (" (default)" if s.rate_limit is None else ""),
            f"{s.created_at:%Y-%m-%d %H:%M}",
            f"{s.revoked_at:%Y-%m-%d %H:%M}" if s.revoked_at else "",
        )
    out.print(table)


@sources_app.command("limit")
def sources_limit(
    name: Annotated[str, typer.Argument(help="The source.")],
    calls_per_second: Annotated[
        int | None, typer.Argument(help="Calls a second (0: none); omitted: the default.")
    ] = None,
) -> None:
    """Set a source's rate limit: running collectors apply it within seconds."""
    from crm import db
    from crm.collect import sources

    url = db.database_url()
    db.upgrade(url)
    sources.set_rate_limit(url, name, calls_per_second)
    shown = "the default" if calls_per_second is None else f"{calls_per_second:,} calls a second"
    out.print(f"source {name}: {shown}" if calls_per_second != 0 else f"source {name}: no limit")


@sources_app.command("revoke")
def sources_revoke(name: Annotated[str, typer.Argument(help="The source.")]) -> None:
    """Revoke a source's write key: running collectors refuse it within seconds."""
    from crm import db
    from crm.collect import sources

    url = db.database_url()
    db.upgrade(url)
    sources.revoke(url, name)
    out.print(f"source {name} revoked")


@contract_app.command("schema")
def contract_schema() -> None:
    """Print the JSON Schema of one event line."""
    from crm.contract import json_schema

    out.print_json(json.dumps(json_schema()))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except CrmError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
