"""
### journeys: see and steer the event-triggered journeys

The journeys themselves run in `crm journeys run` (a long-running process beside the collector,
in `make ui` and in docker-compose): it reads each load as it lands and sends what is due within
seconds, which a scheduler's task could not. This DAG is where ops watch and steer it:

- **Hourly**, one task reports every journey step: running or paused, its entries by state
  (waiting, exited, planned, expired), and the loads committed more than 10 minutes ago that it
  has not read. A running journey behind on loads fails the task (the journeys process is down
  or stuck), so the usual failure alerts reach ops.
- **Trigger form**: `pause` and `resume` take journey ids (a journey's follow-up steps go with
  it). A paused journey enters nobody and plans nothing; on resume, entries more than
  `max_late_hours` past their due time expire unsent.

Same by hand: `crm journeys pause ID`, `crm journeys resume ID`, `crm journeys status`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from crm.alerts import deadline


@dag(
    dag_id="journeys",
    schedule="17 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["shop-crm", "campaigns", "journeys"],
    deadline=deadline("journeys", timedelta(minutes=15)),
    default_args={"owner": "marketing", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "pause": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Pause journeys",
            description="Journey ids (campaign file names) to pause.",
        ),
        "resume": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Resume journeys",
            description="Journey ids to resume.",
        ),
    },
)
def journeys() -> None:
    @task
    def status() -> dict[str, dict[str, object]]:
        from crm import db
        from crm.errors import CrmError
        from notify.journeys import control
        from notify.run import CAMPAIGNS, select_campaigns

        p = get_current_context()["params"]
        url = db.database_url()
        db.upgrade(url)
        state = control(url, select_campaigns(CAMPAIGNS), list(p["pause"] or []),
                        list(p["resume"] or []))  # fmt: skip
        for cid, row in sorted(state.items()):
            print(f"{cid}: {'paused' if row['paused'] else 'running'}, entries {row['entries']},"
                  f" loads behind {row['loads behind']}")  # fmt: skip
        behind = sorted(c for c, row in state.items() if row["loads behind"])
        if behind:
            raise CrmError(f"journeys behind on loads older than 10 minutes: {behind}; is"
                           " `crm journeys run` running?")  # fmt: skip
        return state

    status()


journeys()
