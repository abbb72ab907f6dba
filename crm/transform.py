"""Running the dbt project (``crm transform`` and the build_customer_models DAG)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from crm import db
from crm.errors import CrmError
from crm.settings import PROJECT_ROOT, Settings, get_settings

DBT_PROJECT = PROJECT_ROOT / "dbt_project"


class TransformError(CrmError):
    """dbt failed; the message names the failing models and tests."""


def dbt_env(
    settings: Settings | None = None, url: str | None = None, *, start: bool = True
) -> dict[str, str]:
    """The CRM_DBT_* variables profiles.yml reads, from the database URL in use.

    With ``start=False`` nothing is started or contacted (for DAG parsing): the embedded
    server's address is derived from settings (it listens on a socket in CRM_HOME/pgdata).
    """
    settings = settings or get_settings()
    if url is None and not start and not settings.database_url:
        url = db.embedded_url_offline(settings)
    info = db.conn_info(url or db.database_url(settings))
    env = {
        "CRM_DBT_HOST": info.host,
        "CRM_DBT_PORT": str(info.port),
        "CRM_DBT_USER": info.user,
        "CRM_DBT_PASSWORD": info.password,
        "CRM_DBT_DBNAME": info.dbname,
    }
    for name in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        value = getattr(info, name)
        if value:
            env[f"CRM_DBT_{name.upper()}"] = value
    return env


def dbt_executable() -> str:
    return str(Path(sys.executable).with_name("dbt"))


def run_dbt(
    args: list[str],
    *,
    settings: Settings | None = None,
    url: str | None = None,
    capture: bool = False,
    project_dir: Path = DBT_PROJECT,
) -> subprocess.CompletedProcess[str]:
    """Run one dbt command against the project (``project_dir``: a copy of it); raise
    TransformError when it fails."""
    env = {
        **os.environ,
        **dbt_env(settings, url),
        "DBT_PROFILES_DIR": str(project_dir),
        "DBT_PROJECT_DIR": str(project_dir),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    proc = subprocess.run(
        [dbt_executable(), *args],
        cwd=project_dir,
        env=env,
        text=True,
        capture_output=capture,
    )
    if proc.returncode != 0:
        detail = _failures(proc.stdout if capture else "")
        raise TransformError(f"dbt {' '.join(args)} failed{': ' + detail if detail else ''}")
    return proc


def _failures(output: str) -> str:
    lines = [
        line.strip()
        for line in output.splitlines()
        if ("FAIL" in line or "ERROR" in line) and " of " in line
    ]
    return "; ".join(lines[:10])


def build(
    *,
    full_refresh: bool = False,
    select: str | None = None,
    dbt_vars: dict[str, object] | None = None,
    settings: Settings | None = None,
    url: str | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`dbt build`: every model, then its tests, in dependency order."""
    args = ["build"]
    if full_refresh:
        args.append("--full-refresh")
    if select:
        args += ["--select", select]
    if dbt_vars:
        args += ["--vars", json.dumps(dbt_vars)]
    return run_dbt(args, settings=settings, url=url, capture=capture)


def lint_database_url(settings: Settings | None = None) -> str:
    """A database of its own for ``make lint``, dropped and created anew on each run, on the
    same server as the pipeline's: what sqlfluff's dbt templater compiles against never
    depends on what the pipeline's database holds."""
    url = db.database_url(settings)
    return db.fresh_database(url, db.conn_info(url).dbname + "_lint")


def sqlfluff_lint(settings: Settings | None = None) -> int:
    """sqlfluff with the dbt templater over the project (``make lint``), once per branch of
    the incremental models, each against a known state of a database of its own:

    1. nothing built: ``is_incremental()`` is false, every model's full-build SQL is linted;
    2. every model built (on empty raw tables): ``is_incremental()`` is true, the incremental
       SQL is linted.
    """
    lint_url = lint_database_url(settings)
    env = {**os.environ, **dbt_env(url=lint_url), "DBT_PROFILES_DIR": str(DBT_PROJECT)}
    sqlfluff = [str(Path(sys.executable).with_name("sqlfluff")), "lint", "models", "tests"]
    print(
        f"== sqlfluff, full builds: no model built in {db.conn_info(lint_url).dbname}", flush=True
    )
    full = subprocess.run(sqlfluff, cwd=DBT_PROJECT, env=env).returncode
    print("== dbt build (models, snapshots) on the lint database's empty tables", flush=True)
    built = subprocess.run(
        [
            dbt_executable(),
            "--quiet",
            "build",
            "--resource-type",
            "model",
            "--resource-type",
            "snapshot",
        ],
        cwd=DBT_PROJECT,
        env=env,
    ).returncode
    if built != 0:
        print(
            "dbt failed to build the project on empty tables: see the model above", file=sys.stderr
        )
        return built
    print("== sqlfluff, incremental runs: every model built", flush=True)
    incremental = subprocess.run(sqlfluff, cwd=DBT_PROJECT, env=env).returncode
    return full or incremental


def serve_docs(port: int = 8081) -> None:
    """``make dbt-docs``: generate dbt's documentation site (every model, column, test and
    exposure, with the lineage graph and the database's own column types) and serve it on
    the loopback."""
    run_dbt(["docs", "generate"])
    print(f"dbt docs on http://127.0.0.1:{port} (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run_dbt(["docs", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-browser"])


if __name__ == "__main__":
    if sys.argv[1:] == ["sqlfluff"]:
        sys.exit(sqlfluff_lint())
    if sys.argv[1:] == ["docs"]:
        serve_docs()
        sys.exit(0)
    sys.exit("usage: python -m crm.transform sqlfluff|docs")
