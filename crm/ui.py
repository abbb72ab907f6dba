"""``make ui``: the three screens on the embedded defaults, each with its own login.

- Airflow 3 (api-server, scheduler, dag-processor, triggerer) on http://127.0.0.1:8080, with
  the simple auth manager: user ``admin``, its generated password in
  ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``;
- the MLflow UI on http://127.0.0.1:5000 (runs, registry, champions);
- Superset on http://127.0.0.1:8088 with the dashboards imported, user ``admin``, a password
  generated once into ``CRM_HOME/superset/admin.password``;
- the event collector (``crm collect``) on http://127.0.0.1:8090, for trackers pointed at it
  (write keys from ``crm sources add NAME``);
- the journeys process (``crm journeys run``): event-triggered campaigns, as loads land.

Everything listens on 127.0.0.1 only. The scheduler and triggerer run without their log
servers (which would listen on every interface): the API server reads finished tasks' logs
from ``$AIRFLOW_HOME/logs`` itself. Logs of the services go to ``CRM_HOME/ui/``.

Ctrl-C, SIGTERM, SIGHUP, or any one service stopping, stops them all, with every process
they started; if this supervisor is killed outright, the kernel sends each service SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from crm import db
from crm.errors import CrmError
from crm.settings import PROJECT_ROOT, get_settings

SUPERSET_PY = PROJECT_ROOT / "superset" / ".venv" / "bin" / "python"
HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 15.0


class PortTaken(CrmError):
    """A port a screen needs is in use; the message names the process holding it."""


@dataclass(frozen=True)
class Service:
    """One long-running command, the ports it listens on, and where to check it is up."""

    name: str
    command: Sequence[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    ports: tuple[int, ...] = ()
    health: str | None = None


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


def port_owner(port: int) -> str:
    """Who listens on a TCP port: 'pid N (command line)', or what is known."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return "another process (not allowed to see which)"
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "a process of another user"
            try:
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())
            except psutil.Error:
                cmdline = "?"
            return f"pid {conn.pid} ({cmdline[:120]})"
    return "a socket not listening yet (try again in a minute)"


def check_ports(services: Sequence[Service], host: str = HOST) -> None:
    """Raise PortTaken, naming the holder, when a port the services need is in use."""
    taken = []
    for service in services:
        for port in service.ports:
            with socket.socket() as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    taken.append(f"  port {port} ({service.name}) is taken by {port_owner(port)}")
    if taken:
        raise PortTaken(
            "cannot start the screens:\n" + "\n".join(taken) + "\nStop what holds them (a "
            "previous `make ui`? press Ctrl-C in its terminal, or kill the pid), then retry."
        )


def _die_with_parent() -> None:
    """In the child, before exec: its own session (Ctrl-C in the terminal reaches only the
    supervisor, which stops every service in order), and SIGTERM when the supervisor dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tree(pids: Sequence[int]) -> list[psutil.Process]:
    """Every live process in the given processes' trees and process groups."""
    found: dict[int, psutil.Process] = {}
    groups = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            groups.add(os.getpgid(pid))
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = p
        except (psutil.Error, ProcessLookupError):
            groups.add(pid)  # a leader gone: its group (pgid = its pid) may live on
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in groups:
                found[p.pid] = p
        except (ProcessLookupError, psutil.Error):
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_all(pids: Sequence[int], grace: float | None = None) -> list[int]:
    """SIGTERM every process the services started, SIGKILL what is left after ``grace``
    seconds (default STOP_GRACE_SECONDS); return the pids that had to be killed."""
    grace = STOP_GRACE_SECONDS if grace is None else grace
    procs = _tree(pids)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    alive += [p for p in _tree(pids) if p not in alive]  # started while stopping
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def supervise(
    services: Sequence[Service],
    logs: Path,
    *,
    on_up: Callable[[], None] | None = None,
    poll: float = 1.0,
) -> int:
    """Start the services, report them up, and run until one stops or a signal arrives;
    then stop them all. Returns 0 when stopped by a signal, 1 when a service stopped."""
    check_ports(services)
    # SIGINT too: a process started in the background inherits SIGINT ignored, and Python
    # then leaves it so; a supervisor must stop on it wherever it was started
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for s in services:
            with (logs / f"{s.name}.log").open("wb") as log:
                procs[s.name] = subprocess.Popen(
                    list(s.command), env=s.env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                )  # fmt: skip
        for s in services:
            if s.health:
                up = wait_for(s.health)
                print(
                    f"{s.name}: {'up' if up else f'NOT UP (see {logs / s.name}.log)'}", flush=True
                )
        if on_up:
            on_up()
        while True:
            stopped = [name for name, p in procs.items() if p.poll() is not None]
            if stopped:
                print(f"{', '.join(stopped)} stopped; stopping the others. Its log: "
                      f"{logs / stopped[0]}.log", flush=True)  # fmt: skip
                code = 1
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        killed = stop_all([p.pid for p in procs.values()])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if killed:
            print(f"killed {len(killed)} process(es) that ignored SIGTERM", flush=True)
        print("every service stopped", flush=True)
    return code


def screens(
    home: Path,
    superset_env: dict[str, str] | None = None,
    ports: tuple[int, int, int] = (8080, 5000, 8088),
    collect_port: int = 8090,
) -> list[Service]:
    """The services ``make ui`` starts, every one bound to the loopback (Superset only when
    its environment is given); ``ports``: Airflow's, MLflow's, Superset's."""
    from ml.tracking import tracking_uri

    web, ml_port, bi = ports
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin"}
    airflow = str(bin_dir / "airflow")
    services = [
        Service("airflow-api-server", [airflow, "api-server", "-H", HOST, "-p", str(web)], env,
                (web,), f"http://{HOST}:{web}/api/v2/version"),
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], env),
        Service("airflow-dag-processor", [airflow, "dag-processor"], env),
        Service("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], env),
        Service("mlflow", [str(bin_dir / "mlflow"), "ui", "--host", HOST, "--port", str(ml_port),
                           "--backend-store-uri", tracking_uri()], env,
                (ml_port,), f"http://{HOST}:{ml_port}/health"),
        Service("collector", [str(bin_dir / "crm"), "collect", "--host", HOST,
                              "--port", str(collect_port)], env,
                (collect_port,), f"http://{HOST}:{collect_port}/health"),
        Service("journeys", [str(bin_dir / "crm"), "journeys", "run"], env),
    ]  # fmt: skip
    if superset_env is not None:
        services.append(
            Service("superset", [str(SUPERSET_PY.with_name("superset")), "run", "-h", HOST,
                                 "-p", str(bi), "--with-threads"], superset_env,
                    (bi,), f"http://{HOST}:{bi}/health")
        )  # fmt: skip
    return services


def main() -> None:
    settings = get_settings()
    home = Path(settings.home).resolve()
    logs = home / "ui"
    logs.mkdir(parents=True, exist_ok=True)
    superset_env = {
        **os.environ,
        "CRM_HOME": str(home),
        "SUPERSET_CONFIG_PATH": str(PROJECT_ROOT / "superset" / "superset_config.py"),
        "SUPERSET_SECRET_KEY": db.kept_secret(home / "superset" / "secret_key"),
        "SUPERSET_ADMIN_PASSWORD": db.kept_secret(home / "superset" / "admin.password"),
    }
    services = screens(home, superset_env)
    try:
        check_ports(services)
    except PortTaken as exc:
        sys.exit(str(exc))
    url = db.database_url()
    db.upgrade(url)
    reader = db.ensure_reader(url, "crm_superset", db.reader_password("crm_superset", settings))
    print("importing the Superset dashboards ...", flush=True)
    with (logs / "superset-bootstrap.log").open("w") as log:
        subprocess.run([str(SUPERSET_PY), str(PROJECT_ROOT / "superset" / "bootstrap.py"),
                        "--database-url", reader], env=superset_env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    airflow_pw = Path(os.environ.get("AIRFLOW_HOME", home / "airflow"))
    airflow_pw = airflow_pw / "simple_auth_manager_passwords.json.generated"

    def banner() -> None:
        print(f"""
  Airflow   http://{HOST}:8080   user admin, password in {airflow_pw}
  MLflow    http://{HOST}:5000
  Superset  http://{HOST}:8088   user admin, password in {home / "superset" / "admin.password"}
  Collector http://{HOST}:8090   Segment's Tracking API; a write key: crm sources add NAME
Logs in {logs}. Ctrl-C stops everything.""", flush=True)  # fmt: skip

    try:
        code = supervise(services, logs, on_up=banner)
    except PortTaken as exc:  # taken between the check above and the start
        sys.exit(str(exc))
    sys.exit(code)


if __name__ == "__main__":
    main()
