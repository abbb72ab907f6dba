"""docker-compose.yml cannot run here (no Docker engine): check everything that can be checked
without one: it parses, every service is health-checked, every image and command it names
exists in the project, its settings match the code, its secrets all come from .env, and the
development TLS certificates it expects are valid for the name the services use."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).parent.parent
GENERATED = ("./landing", "./secrets", "./docker/certs")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_the_full_stack_is_there_and_every_long_running_service_is_health_checked() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "mlflow",
            "superset-init", "superset", "collector", "journeys"} <= set(services)  # fmt: skip
    for name, svc in services.items():
        if not name.endswith("-init"):
            assert "healthcheck" in svc, name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") and not src.startswith(GENERATED):
                assert (ROOT / src).exists(), (name, src)
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").exists(), name
        for image in [svc.get("image", "")]:
            if image.startswith("shop-crm"):  # built here, by some service of the stack
                assert any(s.get("image") == image and "build" in s for s in services.values())


def test_collector_replicas_each_spool_to_their_own_volume() -> None:
    collector = compose()["services"]["collector"]
    spool = collector["environment"]["CRM_COLLECT_SPOOL_DIR"]
    assert spool in collector["volumes"]  # anonymous: one per replica, kept across restarts
    assert "--port" in collector["command"] and "8090" in collector["healthcheck"]["test"][-1]


def test_airflow_runs_celery_on_redis_so_workers_scale_out() -> None:
    doc = compose()
    env = doc["x-airflow"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        and "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
    )
    worker = doc["services"]["airflow-worker"]
    assert worker["command"][:3] == ["airflow", "celery", "worker"]
    assert "ports" not in worker and "container_name" not in worker  # --scale needs both
    lock = (ROOT / "uv.lock").read_text()
    assert 'name = "apache-airflow-providers-celery"' in lock


def test_erasure_flushes_the_redis_superset_caches_in() -> None:
    doc = compose()
    pipeline = doc["x-pipeline-env"]["CRM_SUPERSET_CACHE_URL"]
    assert pipeline == doc["services"]["superset"]["environment"]["SUPERSET_REDIS_URL"]
    assert pipeline != doc["x-pipeline-env"]["CRM_REDIS_URL"]  # its own database


def test_every_secret_comes_from_env_and_none_has_a_default() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(?::-[^}]*)?\}", text))
    example = env_example()
    assert referenced - {"SUPERSET_PUBLIC_URL"} <= set(example), referenced - set(example)
    for key, value in example.items():
        if any(w in key for w in ("PASSWORD", "SECRET")):
            assert value == "change-me", key
    assert "admin:admin@" not in text and "password: admin" not in text.lower()


def test_compose_settings_match_the_code() -> None:
    from crm.settings import Settings

    known = {f"CRM_{n.upper()}" for n in Settings.model_fields}
    crm_vars = {k for k in env_example() if k.startswith("CRM_")} - {"CRM_READER_PASSWORD"}
    assert crm_vars <= known, crm_vars - known
    commented = re.findall(r"^# (CRM_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)
    assert set(commented) <= known
    for svc in compose()["services"].values():
        env = svc.get("environment") or {}
        assert {k for k in env if k.startswith("CRM_")} - {"CRM_READER_PASSWORD"} <= known


def test_mlflow_runs_with_basic_auth_no_default_secrets_and_no_published_port() -> None:
    services = compose()["services"]
    mlflow, init = services["mlflow"], services["mlflow-init"]
    command = " ".join(mlflow["command"])
    assert "--app-name basic-auth" in command
    assert "default_permission = NO_PERMISSIONS" in command
    assert "ports" not in mlflow  # reached on the compose network, or through a proxy
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "${MLFLOW_FLASK_SERVER_SECRET_KEY}"
    assert "password1234" not in (ROOT / "docker-compose.yml").read_text()
    # the jobs' users are made by mlflow-init; each job authenticates as its own
    assert init["command"] == ["crm", "mlflow", "provision"]
    assert init["environment"]["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"
    worker = services["airflow-worker"]["environment"]
    assert worker["CRM_MLFLOW_TRAIN_PASSWORD"] == "${MLFLOW_TRAIN_PASSWORD}"
    assert worker["CRM_MLFLOW_SCORE_PASSWORD"] == "${MLFLOW_SCORE_PASSWORD}"
    assert worker["CRM_MLFLOW_TRAIN_USERNAME"] != worker["CRM_MLFLOW_SCORE_USERNAME"]
    assert "mlflow-init" in services["airflow-worker"]["depends_on"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"airflow-apiserver", "superset", "collector"}, published


def test_commands_the_stack_runs_exist() -> None:
    from crm.cli import app

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "crm" in scripts
    runner = CliRunner()
    for sub in (["db", "upgrade", "--help"], ["db", "reader-url", "--help"],
                ["mlflow", "provision", "--help"], ["collect", "--help"],
                ["sources", "add", "--help"]):  # fmt: skip
        assert runner.invoke(app, sub).exit_code == 0, sub
    superset_lock = (ROOT / "superset" / "uv.lock").read_text()
    for package in ("apache-superset", "gunicorn", "psycopg2-binary"):
        assert f'name = "{package}"' in superset_lock
    init = " ".join(compose()["services"]["superset-init"]["command"])
    assert "/app/bootstrap.py" in init


def test_images_carry_what_the_services_need() -> None:
    def copied(dockerfile: Path) -> set[str]:
        return {
            part
            for line in dockerfile.read_text().splitlines()
            if line.startswith("COPY ")
            for part in line.split()[1:-1]
        }

    assert {"crm", "ml", "notify", "dags", "dbt_project", "campaigns"} <= copied(
        ROOT / "Dockerfile"
    )
    assert {"superset_config.py", "bootstrap.py", "bundle", "uv.lock"} <= copied(
        ROOT / "superset" / "Dockerfile"
    )
    assert "curl" in (ROOT / "Dockerfile").read_text()  # the health checks use it


def test_postgres_runs_tls_with_dev_certificates_valid_for_its_service_name(
    tmp_path: Path,
) -> None:
    entry = " ".join(compose()["services"]["postgres"]["entrypoint"])
    assert "ssl=on" in entry and "ssl_key_file" in entry
    for svc in ("airflow-init", "superset-init"):
        assert "sslmode=require" in yaml.safe_dump(compose()["services"][svc])
    script = tmp_path / "docker" / "make-dev-certs.sh"
    script.parent.mkdir()
    shutil.copy(ROOT / "docker" / "make-dev-certs.sh", script)
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    certs = tmp_path / "docker" / "certs"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), "-verify_hostname", "postgres",
         str(certs / "server.crt")], capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert oct((certs / "server.key").stat().st_mode)[-3:] == "600"
