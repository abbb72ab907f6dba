"""
### privacy_requests: data subjects' access and erasure requests

Hourly, and from the trigger form. Works off every pending row of `crm.privacy_requests`:

- **export**: everything held about the person, across every identifier stitched to them, as
  one JSON document in `CRM_HOME/privacy/request-<id>.json` (mode 0600) for the privacy officer
  to hand over;
- **erase**: the person removed everywhere (raw and quarantined events, `pii`, every mart,
  `ml.*`, Redis; delivery-log rows anonymised), with tombstones so no later load brings them
  back. The request keeps only the SHA-256 of the id once done.

**Trigger form**: `kind` and `subject` queue one more request first. Logs and XComs carry
counts only, never the subject. Same by hand: `crm privacy export|erase`. See docs/privacy.md.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from crm.alerts import deadline


@dag(
    dag_id="privacy_requests",
    schedule="15 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "privacy"],
    deadline=deadline("privacy_requests", timedelta(hours=2)),
    default_args={"owner": "privacy-officer", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "kind": Param(
            None,
            type=["null", "string"],
            enum=[None, "export", "erase"],
            title="Request",
            description="export (access) or erase",
        ),
        "subject": Param(
            None,
            type=["null", "string"],
            title="Whose data",
            description="A customer, user or anonymous id.",
        ),
    },
)
def privacy_requests() -> None:
    @task
    def work_off() -> dict[str, int]:
        from pathlib import Path

        from crm import db, privacy
        from crm.settings import get_settings
        from ml.publish import redis_client

        context = get_current_context()
        p = context["params"]
        settings = get_settings()
        url = db.database_url()
        db.upgrade(url)
        if p.get("kind") and p.get("subject"):
            with db.connect(url) as conn:
                privacy.submit(conn, p["kind"], p["subject"], f"airflow:{context['run_id']}")
                conn.commit()
        out_dir = Path(settings.home) / "privacy"
        return dict(privacy.process_pending(url, out_dir, redis_client(settings),
                                            settings.redis_prefix,
                                            privacy.dashboard_cache(settings)))  # fmt: skip

    work_off()


privacy_requests()
