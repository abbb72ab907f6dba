"""``make demo``'s Airflow steps: run one DAG as an install's scheduler would (``airflow dags
test`` records the run, its task logs and the asset events it produced in Airflow's metadata
database, so ``make ui`` shows them), then say in a few lines what it did.

    python -m crm.demo DAG_ID LOGICAL_DATE [--fake-fcm]

The whole log goes to ``CRM_HOME/demo-logs/<dag_id>-<date>.log``; on failure its end is
printed and the exit code is 1. ``--fake-fcm`` serves a local fake of FCM's HTTP v1 API for
the run and points the pushes at it (CRM_FCM_ENDPOINT, CRM_FCM_CA_FILE).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crm.display import number
from crm.settings import get_settings

RETURNED = re.compile(r"Returned value was: (.*?) \[airflow")
STARTED = re.compile(r"\[DAG TEST\] starting task_id=(\S+)(?: map_index=(-?\d+))?")
FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+?), .*?state=(\w+)")


@dataclass
class DagRunLog:
    """What a ``dags test`` log says: the run's final state and each task's return value."""

    state: str | None = None
    tasks: list[str] = field(default_factory=list)
    returned: dict[str, Any] = field(default_factory=dict)


def read_log(text: str) -> DagRunLog:
    run = DagRunLog()
    task = None
    for line in text.splitlines():
        if m := STARTED.search(line):
            index = int(m.group(2) or -1)
            task = m.group(1) if index < 0 else f"{m.group(1)}[{index}]"  # a mapped task's
            run.tasks.append(task)
        elif (m := RETURNED.search(line)) and task:
            try:
                run.returned[task] = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                run.returned[task] = m.group(1)
        elif m := FINISHED.search(line):
            run.state = m.group(2)
    return run


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flat(v)}" for k, v in value.items())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(value)
    return str(value)


def show(dag_id: str, run: DagRunLog, out: Console) -> None:
    """The few lines a person wants from a run: per task that returned something, what."""
    planned = run.returned.get("plan")
    if isinstance(planned, dict) and isinstance(planned.get("planned"), dict):
        table = Table("campaign", "planned", "held out", "suppressed")
        for cid, counts in planned["planned"].items():
            table.add_row(cid, *(number(counts.get(k, 0)) for k in
                                 ("planned", "held_out", "suppressed")))  # fmt: skip
        if table.row_count:
            out.print(table)
        else:
            out.print("  plan: no campaign due")
    for task, value in run.returned.items():
        if task in ("send", "sent") and value == {}:
            out.print(f"  {task}: nothing due")
        elif task != "plan" and value not in (None, {}, []):
            out.print(f"  {task}: {_flat(value)}")


def run_dag(dag_id: str, logical_date: str, *, fake_fcm: bool = False) -> int:
    settings = get_settings()
    home = Path(settings.home)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "demo-logs" / f"{dag_id}-{logical_date[:16].replace(':', '')}.log"
    log_path.parent.mkdir(exist_ok=True)
    env = {**os.environ, "CRM_DAG_DEADLINES": "false"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    out = Console()
    with ExitStack() as stack:
        if fake_fcm:
            from notify.fake_fcm import FakeFcm

            fake = stack.enter_context(FakeFcm())
            env |= {"CRM_FCM_ENDPOINT": fake.endpoint, "CRM_FCM_CA_FILE": str(fake.ca_file)}
        started = time.monotonic()
        with log_path.open("w") as log:
            code = subprocess.run([airflow, "dags", "test", dag_id, logical_date], env=env,
                                  stdout=log, stderr=subprocess.STDOUT).returncode  # fmt: skip
        seconds = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    run = read_log(text)
    if code != 0 or run.state != "success":
        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
        print(f"{dag_id} run for {logical_date}: {run.state or 'did not finish'} "
              f"(exit code {code}); the whole log: {log_path}", file=sys.stderr)  # fmt: skip
        return 1
    out.print(f"{dag_id}, run for {logical_date}: success, {len(run.tasks)} tasks in "
              f"{seconds:.0f} s (log: {log_path})")  # fmt: skip
    show(dag_id, run, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm.demo", description=__doc__.split("\n")[0])
    parser.add_argument("dag_id")
    parser.add_argument(
        "logical_date", help="ISO 8601 with an offset, e.g. 2026-02-12T00:00:00+00:00"
    )
    parser.add_argument("--fake-fcm", action="store_true")
    args = parser.parse_args(argv)
    return run_dag(args.dag_id, args.logical_date, fake_fcm=args.fake_fcm)


if __name__ == "__main__":
    sys.exit(main())
