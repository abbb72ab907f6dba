"""The demo's summary of an ``airflow dags test`` run, read from its log."""

from __future__ import annotations

from rich.console import Console

from crm.demo import read_log, show

LOG = """\
2026-12-04T15:22:02Z [info ] [DAG TEST] starting task_id=plan map_index=-1 [airflow.sdk]
2026-12-04T15:22:03Z [info ] Done. Returned value was: {'planned': {'welcome_new_users': \
{'planned': 30, 'held_out': 47, 'suppressed': 337}}, 'sent': {}, 'dry_run': False} \
[airflow.task.operators] loc=python.py:233
2026-12-04T15:22:04Z [info ] [DAG TEST] starting task_id=send map_index=-1 [airflow.sdk]
2026-12-04T15:22:05Z [info ] Done. Returned value was: {'sent': 541} [airflow.task.operators]
2026-12-04T15:22:05Z [info ] [DAG TEST] starting task_id=score_shard map_index=1 [airflow.sdk]
2026-12-04T15:22:05Z [info ] Done. Returned value was: {'churn_scores': 12} [airflow.task]
2026-12-04T15:22:06Z [info ] DagRun Finished: dag_id=send_campaigns, logical_date=2026-02-13 \
08:05:00+00:00, run_id=manual__x, state=success, run_type=manual [airflow.models.dagrun]
"""


def test_a_runs_state_and_each_tasks_return_value_are_read_and_shown() -> None:
    run = read_log(LOG)
    assert run.state == "success" and run.tasks == ["plan", "send", "score_shard[1]"]
    assert run.returned["score_shard[1]"] == {"churn_scores": 12}  # each mapped task its own
    assert run.returned["send"] == {"sent": 541}
    console = Console(width=80, record=True, color_system=None)
    show("send_campaigns", run, console)
    text = console.export_text()
    assert "welcome_new_users" in text and "337" in text and "send: sent 541" in text


def test_a_failed_run_is_read_as_failed() -> None:
    failed = LOG.replace("state=success", "state=failed")
    assert read_log(failed).state == "failed"
    assert read_log("no run finished here").state is None
