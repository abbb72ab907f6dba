"""``make ui``'s supervisor: a signal, or one service stopping, stops every process the
services started (their children too); a taken port is named with its holder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from crm.ui import PortTaken, Service, check_ports

# A service like Airflow's: a leader that starts a child listening on a port (the child in
# the leader's process group, as serve-logs or a uvicorn worker is), and, with "stubborn",
# a second child that ignores SIGTERM. "crash" makes the leader exit after a second.
SERVICE = """
import signal, socket, subprocess, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
listen = ("import socket,time; s=socket.socket(); s.bind(('127.0.0.1',%d)); s.listen();"
          "time.sleep(3600)" % port)
subprocess.Popen([sys.executable, "-c", listen])
if mode == "stubborn":
    deaf = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    subprocess.Popen([sys.executable, "-c", deaf])
time.sleep(1 if mode == "crash" else 3600)
sys.exit(3 if mode == "crash" else 0)
"""

SUPERVISOR = """
import sys
from pathlib import Path
import crm.ui as ui
ui.STOP_GRACE_SECONDS = 3
script, logs, *specs = sys.argv[1:]
services = [ui.Service(f"svc{i}", [sys.executable, script, port, mode], ports=(int(port),))
            for i, spec in enumerate(specs) for port, mode in [spec.split(":")]]
sys.exit(ui.supervise(services, Path(logs), on_up=lambda: print("UP", flush=True), poll=0.2))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(tmp_path: Path, *specs: str) -> subprocess.Popen[str]:
    (tmp_path / "service.py").write_text(SERVICE)
    (tmp_path / "supervisor.py").write_text(SUPERVISOR)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "supervisor.py"), str(tmp_path / "service.py"),
         str(tmp_path / "logs"), *specs],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "UP"
    return proc


def _wait_listening(ports: list[int], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not all(_listening(p) for p in ports):
        assert time.monotonic() < deadline, "the services' children never listened"
        time.sleep(0.1)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_every_service_and_what_it_started(tmp_path: Path, sig: int) -> None:
    ports = [_free_port(), _free_port()]
    proc = _start(tmp_path, f"{ports[0]}:plain", f"{ports[1]}:stubborn")
    _wait_listening(ports)
    started = _descendants(proc.pid)
    assert len(started) == 5  # two leaders, two listeners, one that ignores SIGTERM
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "every service stopped" in out and "killed 1 process(es)" in out
    _, alive = psutil.wait_procs(started, timeout=5)
    assert alive == []
    assert not any(_listening(p) for p in ports)


def test_one_service_stopping_stops_the_others(tmp_path: Path) -> None:
    ports = [_free_port(), _free_port()]
    proc = _start(tmp_path, f"{ports[0]}:plain", f"{ports[1]}:crash")
    _wait_listening(ports)
    started = _descendants(proc.pid)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "svc1 stopped; stopping the others" in out
    _, alive = psutil.wait_procs(started, timeout=5)
    assert alive == []  # the crashed leader's listener too, though its parent was gone
    assert not any(_listening(p) for p in ports)


def test_a_killed_supervisor_takes_its_services_down(tmp_path: Path) -> None:
    port = _free_port()
    proc = _start(tmp_path, f"{port}:plain")
    leaders = psutil.Process(proc.pid).children()
    proc.kill()
    proc.wait(10)
    _, alive = psutil.wait_procs(leaders, timeout=10)
    assert alive == []  # SIGTERM from the kernel (PR_SET_PDEATHSIG)


def test_a_taken_port_is_named_with_the_process_holding_it() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(PortTaken) as err:
            check_ports([Service("superset", ["true"], ports=(port,))])
    finally:
        holder.close()
    message = str(err.value)
    assert f"port {port} (superset) is taken by pid {os.getpid()}" in message
    assert "Ctrl-C" in message


def test_the_screens_listen_on_the_loopback_only(
    airflow_home: Path, crm_env: object, tmp_path: Path
) -> None:
    """Airflow's four services, the MLflow UI, the collector and the journeys process as `make
    ui` starts them: every socket any of their processes listens on is bound to 127.0.0.1 (no
    log server on every interface)."""
    from crm.ui import screens, stop_all, wait_for

    ports = (_free_port(), _free_port(), _free_port())
    collect_port = _free_port()
    services = screens(tmp_path, None, ports, collect_port)
    assert [s.name for s in services] == [
        "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
        "mlflow", "collector", "journeys"]  # fmt: skip
    procs = [
        subprocess.Popen(list(s.command), env=s.env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        for s in services
    ]  # fmt: skip
    try:
        for s in services:
            if s.health:
                assert wait_for(s.health, 180), f"{s.name} did not come up"
        time.sleep(10)  # the scheduler and triggerer would have started their log servers
        assert all(p.poll() is None for p in procs)
        pids = {q.pid for p in procs for q in [psutil.Process(p.pid), *_descendants(p.pid)]}
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        }
    finally:
        stop_all([p.pid for p in procs], grace=10)
    assert {port for _, port in listening} >= {ports[0], ports[1], collect_port}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
