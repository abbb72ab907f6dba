"""
### send_campaigns: plan due campaigns, then send what is due

Hourly, and again whenever `score_customers` publishes new scores. Each run:

1. **plan**: for every campaign in `campaigns/` whose occurrence is due (a one-off's time, the
   latest tick of a recurring cron, this hour for a trigger such as an abandoned cart or a lapse
   into *inactive*), snapshot the audience once with its holdout, and plan each member's send
   slot (fixed local hour, or their best hour from `ml.send_times` inside the campaign's
   window, never in quiet hours) with the message rendered for them;
2. **send**: claim every delivery whose slot has come and send it (push through FCM, e-mail /
   Telegram / Slack / webhooks through apprise), re-checking consent and frequency caps; when
   many are due, `senders` maps several send tasks (one per 20,000 due, at most
   `CRM_SEND_TASKS`), each on whichever worker is free; `sent` adds up what they sent.

A run plans and sends as of the hour it stands for (its logical date), so clearing a run
re-plans that hour. Re-running a run, or two runs at once, never sends twice
(`crm.deliveries` has one row per campaign, customer, channel and slot, claimed before it is
sent).

**Trigger form** (all optional): `campaigns` limits the run to some campaign files;
`launch` sends campaign files now whatever their schedule; `adhoc` is a whole campaign
written in the form (same fields as a file, validated the same way); `dry_run` plans and
renders, logs counts and samples, and records and sends nothing.

Same by hand: `crm campaigns run [--dry-run] [--launch ID]`.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from crm.alerts import deadline
from crm.assets import table_asset

SCORES = table_asset("ml", "churn_scores")
DELIVERIES = table_asset("crm", "deliveries")
ADHOC_EXAMPLE = {
    "id": "flash-sale",
    "name": "Flash sale",
    "audience": {"lifecycle": ["active", "buyer"], "churn_risk": ["medium", "high"]},
    "messages": [{"title": "24 hours only", "body": "20% off {{ top_category }} today.",
                  "default": {"top_category": "everything"}}],
    "channels": ["push", "email"],
    "schedule": {"kind": "once", "at": "2026-01-01T09:00:00+00:00"},
    "send_time": {"mode": "best", "window": [9, 21]},
    "holdout_percent": 10,
    "end_date": "2026-12-31",
}  # fmt: skip


@dag(
    dag_id="send_campaigns",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("5 * * * *", timezone="UTC"), assets=[SCORES]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "campaigns", "push"],
    deadline=deadline("send_campaigns", timedelta(minutes=45)),
    default_args={"owner": "marketing", "retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "campaigns": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Only these campaign files",
            description="Campaign ids (file names); empty = every campaign that is due.",
        ),
        "launch": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Launch now",
            description="Campaign ids to send now, whatever their schedule.",
        ),
        "adhoc": Param(
            None,
            type=["null", "object"],
            title="Ad-hoc campaign",
            description="A whole campaign, same fields as a campaign file, sent now. "
            f"Example: {ADHOC_EXAMPLE}",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Plan and render; log counts and samples; record and send nothing.",
        ),
    },
)
def send_campaigns() -> None:
    def instant() -> pendulum.DateTime:
        """The hour a run stands for: its logical date (an asset-triggered run has none: the
        time it was queued). Re-running or clearing a run plans and sends as of that hour."""
        ctx = get_current_context()
        return ctx.get("logical_date") or ctx["dag_run"].run_after

    @task
    def plan() -> dict[str, object]:
        from crm import db
        from notify.run import CAMPAIGNS, adhoc_campaign, choose, run

        p = get_current_context()["params"]
        files, launched = choose(CAMPAIGNS, list(p["campaigns"] or []), list(p["launch"] or []),
                                 launching=bool(p["adhoc"]))  # fmt: skip
        if p["adhoc"]:
            launched.append(adhoc_campaign(p["adhoc"]))
        url = db.database_url()
        db.upgrade(url)
        report = run(url, instant(), files, launched, dry_run=bool(p["dry_run"]),
                     send=False)  # fmt: skip
        for cid, samples in report.samples.items():
            for s in samples[:3]:
                print(f"[dry run] {cid} {s['variant']} via {s['channel']}: {s['title']}")
        return report.as_dict()

    @task
    def senders(planned: dict[str, object]) -> list[int]:
        """One send task, or more when many deliveries are due (CRM_SEND_TASKS)."""
        from crm import db
        from crm.settings import get_settings
        from notify.run import send_tasks

        if planned.get("dry_run"):
            return []
        return list(range(send_tasks(db.database_url(), get_settings(), instant())))

    @task(map_index_template="sender {{ task.op_kwargs['index'] }}")
    def send(index: int) -> dict[str, int]:
        """Claims batches of due deliveries and sends them (the claim keeps the send tasks
        from sharing a delivery)."""
        from crm import db
        from crm.settings import get_settings
        from notify.run import send_now

        return send_now(db.database_url(), get_settings(), instant())

    @task(outlets=[DELIVERIES])
    def sent(parts: list[dict[str, int]]) -> dict[str, int]:
        total: Counter[str] = Counter()
        for part in parts:
            total.update(part)
        return dict(total)

    sent(send.expand(index=senders(plan())))


send_campaigns()
