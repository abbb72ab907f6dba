"""Tell Airflow that collected events arrived, at most every ``CRM_COLLECT_BUILD_MINUTES``.

The ``collected_events`` DAG runs on that interval and calls :func:`new_loads`: when loads
from the collector committed since it last announced, it records the newest and its task
updates the ``raw.events`` asset, which schedules ``build_customer_models`` (as a daily file
does); otherwise the task is skipped and nothing is scheduled. dbt thus runs on fresh data
without running per micro-batch.
"""

from __future__ import annotations

from typing import Any

from crm import db


def new_loads(url: str | None = None) -> dict[str, Any] | None:
    """Counts of the collector's loads since the last announcement (and mark them
    announced), or None when there are none."""
    with db.connect(url or db.database_url()) as conn, conn.transaction():
        db.require_migrated(conn)
        conn.execute("lock table raw.collector_announced in exclusive mode")
        row = conn.execute("select last_load_id from raw.collector_announced").fetchone()
        last = row[0] if row else 0
        found = conn.execute(
            "select count(*), coalesce(sum(loaded), 0), max(load_id) from raw.load_audit"
            " where load_id > %s and source like 'collector:%%'"
            " and status in ('loaded', 'partial') and loaded > 0",
            (last,),
        ).fetchone()
        assert found is not None
        loads, events, newest = found
        if not loads:
            return None
        conn.execute(
            "insert into raw.collector_announced (last_load_id) values (%s)"
            " on conflict (id) do update set last_load_id = excluded.last_load_id,"
            " announced_at = now()",
            (newest,),
        )
    return {"loads": int(loads), "events": int(events), "newest_load_id": int(newest)}
