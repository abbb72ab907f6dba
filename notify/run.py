"""One delivery run, as the hourly ``send_campaigns`` DAG and ``crm campaigns run`` do it:
plan every campaign whose occurrence is due (and any launched by hand), then send every
delivery whose slot has come.

A dry run plans inside a transaction that is rolled back: it reports what would be planned and
shows rendered samples, and records and sends nothing. For an event-triggered journey it plans
who would have entered from the last ``hours`` of events (``notify.journeys.dry_run``).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from crm.settings import PROJECT_ROOT, Settings, get_settings
from notify.campaigns import Campaign, CampaignError, load_campaigns, parse_campaign
from notify.deliver import plan, send_due

log = logging.getLogger(__name__)
CAMPAIGNS = PROJECT_ROOT / "campaigns"


@dataclass
class RunReport:
    planned: dict[str, dict[str, int]] = field(default_factory=dict)  # campaign -> state -> n
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # outcome -> n
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Counts only (no rendered text): safe for XComs and logs."""
        return {"planned": self.planned, "sent": self.sent, "dry_run": self.dry_run}


def select_campaigns(folder: Path = CAMPAIGNS, ids: list[str] | None = None) -> list[Campaign]:
    campaigns = load_campaigns(folder)
    if ids:
        known = {c.id for c in campaigns}
        missing = sorted(set(ids) - known)
        if missing:
            raise CampaignError(f"no campaign {missing} in {folder}; have {sorted(known)}")
        campaigns = [c for c in campaigns if c.id in ids]
    return campaigns


def choose(
    folder: Path, only: list[str] | None, launch: list[str] | None, launching: bool = False
) -> tuple[list[Campaign], list[Campaign]]:
    """(campaigns planned when due, campaigns launched now). A launch (``launch`` ids, or
    ``launching`` another, e.g. an ad-hoc one) without ``only`` runs just what is launched."""
    launched = select_campaigns(folder, launch) if launch else []
    if (launched or launching) and not only:
        return [], launched
    return select_campaigns(folder, only or None), launched


PARALLEL_MIN = 2_000  # due deliveries worth one more sender process (each takes ~2 s to start)
# deliveries one sender claims at a time (CRM_SEND_BATCH 0): the SDK sends at most 500 in a
# call; over libcurl a larger batch spreads each batch's round trips (claim, re-check, caps,
# outcomes) thinner
SEND_BATCH = {"sdk": 500, "curl": 2000}


SEND_TASK_MIN = 20_000  # due deliveries worth one more mapped send task (a task starts in ~5 s)


def due_count(url: str, now: datetime | None = None) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select count(*) from crm.deliveries where state in ('planned', 'sending')"
            " and slot <= %s",
            (now or datetime.now(UTC),),
        ).fetchone()
    return int(row[0]) if row else 0


def send_tasks(url: str, settings: Settings, now: datetime | None = None) -> int:
    """How many send tasks to map: one per SEND_TASK_MIN due deliveries, at most
    CRM_SEND_TASKS, at least one."""
    if settings.send_tasks <= 1:
        return 1
    return max(1, min(settings.send_tasks, -(-due_count(url, now) // SEND_TASK_MIN)))


def send_batch(settings: Settings) -> int:
    return settings.send_batch or SEND_BATCH[settings.fcm_transport]


def send_now(url: str, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Send every delivery whose slot has come (push through FCM, the rest through apprise),
    in up to CRM_SEND_PROCESSES processes when there is enough to send: each claims its own
    batches (``for update skip locked``), so none sends a delivery another one claimed."""
    from ml.publish import redis_client

    r = redis_client(settings)
    processes = 1
    if settings.send_processes > 1:
        processes = max(1, min(settings.send_processes, due_count(url, now) // PARALLEL_MIN))
    if processes == 1:
        return dict(_send_process(url, settings, now, None, 0, send_batch(settings)))
    # the embedded Redis is reached through its socket; a configured one through its URL
    redis_at = settings.redis_url or f"unix://{r.socket_file}"  # type: ignore[attr-defined]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
    total: Counter[str] = Counter()
    with ProcessPoolExecutor(processes, mp_context=spawn) as pool:
        batch = send_batch(settings)
        parts = [pool.submit(_send_process, url, settings, now, redis_at, i, batch)
                 for i in range(processes)]  # fmt: skip
        for part in parts:
            total.update(part.result())
    return dict(total)


def _send_process(
    url: str,
    settings: Settings,
    now: datetime | None,
    redis_at: str | None,
    index: int,
    batch: int,
) -> Counter[str]:
    """One sender: its own FCM client and Redis connection."""
    import redis

    from ml.publish import redis_client
    from notify.fcm import FcmSender

    r = redis.Redis.from_url(redis_at) if redis_at else redis_client(settings)
    sender = FcmSender.from_settings(settings, name=f"shop-crm-sender-{index}")
    try:
        return send_due(url, sender, r, now=now, batch=batch, settings=settings)
    finally:
        sender.close()


def adhoc_campaign(definition: dict[str, Any]) -> Campaign:
    """A campaign defined in the Airflow trigger form: validated exactly like a file."""
    return parse_campaign(definition, "trigger form")


def run(
    url: str,
    now: datetime,
    campaigns: list[Campaign],
    launch: list[Campaign] | None = None,
    *,
    source: str = "file",
    launched_by: str = "trigger form",
    dry_run: bool = False,
    send: bool = True,
    settings: Settings | None = None,
    hours: float = 24,
) -> RunReport:
    """Plan due occurrences of ``campaigns`` and an occurrence at ``now`` of each of
    ``launch``; then send what is due (unless ``send`` is False or this is a dry run). A
    journey is planned as its events arrive (``crm journeys run``); its dry run shows what it
    would plan from the last ``hours`` of events."""
    from notify.journeys import dry_run as journey_dry_run
    from notify.journeys import is_journey

    settings = settings or get_settings()
    report = RunReport(dry_run=dry_run)
    todo = [(c, None, source) for c in campaigns] + [(c, now, launched_by) for c in launch or []]
    with psycopg.connect(url) as conn:
        for campaign, occurrence, src in todo:
            if dry_run:
                with conn.transaction(force_rollback=True):
                    if is_journey(campaign):
                        counts = journey_dry_run(conn, campaign, now, settings, hours)
                    else:
                        counts = plan(conn, campaign, now, settings, occurrence, src)
                    report.samples[campaign.id] = _samples(conn, campaign.id, now)
            else:
                counts = plan(conn, campaign, now, settings, occurrence, src)
                conn.commit()
            if counts:
                report.planned[campaign.id] = dict(counts)
                log.info("%s: %s", campaign.id, dict(counts))
    if send and not dry_run:
        report.sent = send_now(url, settings, now)
    return report


def _samples(conn: psycopg.Connection, campaign_id: str, now: datetime) -> list[dict[str, Any]]:
    cur = conn.execute(
        "select variant, segment, channel, slot, title, body, link from crm.deliveries"
        " where campaign_id = %s and planned_at = %s and state = 'planned'"
        " order by delivery_id limit 5",
        (campaign_id, now),
    )
    cols = [c.name for c in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
