"""``make ui``: the three screens on the embedded defaults, each with its own login.

- Airflow 3 (api-server, scheduler, dag-processor, triggerer) on http://127.0.0.1:8080, with
  the simple auth manager: user ``admin``, its generated password in
  ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``;
- the MLflow UI on http://127.0.0.1:5000 (runs, registry, champions);
- Superset on http://127.0.0.1:8088 with the dashboards imported, user ``admin``, a password
  generated once into ``CRM_HOME/superset/admin.password``.

Logs go to ``CRM_HOME/ui/``. Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from crm import db
from crm.settings import PROJECT_ROOT, get_settings

SUPERSET_PY = PROJECT_ROOT / "superset" / ".venv" / "bin" / "python"


def wait_for(url: str, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def _stop(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)  # stop the services on kill as on Ctrl-C
    settings = get_settings()
    home = Path(settings.home).resolve()
    logs = home / "ui"
    logs.mkdir(parents=True, exist_ok=True)
    url = db.database_url()
    db.upgrade(url)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin"}
    superset_env = {
        **os.environ,
        "CRM_HOME": str(home),
        "SUPERSET_CONFIG_PATH": str(PROJECT_ROOT / "superset" / "superset_config.py"),
        "SUPERSET_SECRET_KEY": db.kept_secret(home / "superset" / "secret_key"),
        "SUPERSET_ADMIN_PASSWORD": db.kept_secret(home / "superset" / "admin.password"),
    }
    reader = db.ensure_reader(url, "crm_superset", db.reader_password("crm_superset", settings))
    print("importing the Superset dashboards ...", flush=True)
    subprocess.run([str(SUPERSET_PY), str(PROJECT_ROOT / "superset" / "bootstrap.py"),
                    "--database-url", reader], env=superset_env, check=True,
                   stdout=(logs / "superset-bootstrap.log").open("w"),
                   stderr=subprocess.STDOUT)  # fmt: skip
    from ml.tracking import tracking_uri

    commands = {
        "airflow-api-server": ([str(bin_dir / "airflow"), "api-server", "-p", "8080"], env),
        "airflow-scheduler": ([str(bin_dir / "airflow"), "scheduler"], env),
        "airflow-dag-processor": ([str(bin_dir / "airflow"), "dag-processor"], env),
        "airflow-triggerer": ([str(bin_dir / "airflow"), "triggerer"], env),
        "mlflow": ([str(bin_dir / "mlflow"), "ui", "--host", "127.0.0.1", "--port", "5000",
                    "--backend-store-uri", tracking_uri()], env),
        "superset": ([str(SUPERSET_PY.with_name("superset")), "run", "-h", "127.0.0.1", "-p",
                      "8088", "--with-threads"], superset_env),
    }  # fmt: skip
    procs = [
        subprocess.Popen(cmd, env=e, stdout=(logs / f"{name}.log").open("w"),
                         stderr=subprocess.STDOUT, start_new_session=True)
        for name, (cmd, e) in commands.items()
    ]  # fmt: skip
    try:
        checks = {
            "Airflow": "http://127.0.0.1:8080/api/v2/version",
            "MLflow": "http://127.0.0.1:5000/health",
            "Superset": "http://127.0.0.1:8088/health",
        }
        for name, check in checks.items():
            print(f"{name}: {'up' if wait_for(check) else f'NOT UP (see {logs})'}", flush=True)
        airflow_pw = Path(os.environ.get("AIRFLOW_HOME", home / "airflow"))
        airflow_pw = airflow_pw / "simple_auth_manager_passwords.json.generated"
        print(f"""
  Airflow   http://127.0.0.1:8080   user admin, password in {airflow_pw}
  MLflow    http://127.0.0.1:5000
  Superset  http://127.0.0.1:8088   user admin, password in {home / "superset" / "admin.password"}
Logs in {logs}. Ctrl-C stops everything.""", flush=True)  # fmt: skip
        while all(p.poll() is None for p in procs):
            time.sleep(2)
        print("a service stopped; see its log in", logs)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
