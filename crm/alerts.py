"""What happens when a DAG run misses its deadline (Airflow 3's Deadline Alerts, the successor
of SLAs): a warning in the triggerer's log and, when CRM_APPRISE_OPS_URL is set, a message to
ops through apprise (Slack, e-mail, ...). Nothing personal is in it: the DAG and run id only."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)


async def deadline_missed(context: dict[str, Any], **kwargs: Any) -> None:
    run = context.get("dag_run")
    text = f"{kwargs.get('dag_id', '?')} run {getattr(run, 'run_id', '?')} missed its deadline " \
        f"({kwargs.get('within', '?')})"  # fmt: skip
    log.warning(text)
    from crm.settings import Settings

    url = Settings().apprise_ops_url  # read now: the triggerer outlives settings changes
    if url:
        import apprise

        target = apprise.Apprise()
        target.add(url)
        await target.async_notify(title="shop-crm: deadline missed", body=text)


def deadline(dag_id: str, within: timedelta) -> Any:
    """A DeadlineAlert: the run must finish within ``within`` of being queued (None when
    CRM_DAG_DEADLINES is false, for `airflow dags test`)."""
    from crm.settings import get_settings

    if not get_settings().dag_deadlines:
        return None
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=within,
        callback=AsyncCallback(
            "crm.alerts.deadline_missed", kwargs={"dag_id": dag_id, "within": str(within)}
        ),
    )
