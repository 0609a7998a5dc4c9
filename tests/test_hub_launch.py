"""Starting and stopping the embedded stack as an operator does, with real processes and real
signals (issue 11, item 12): `enclave serve hub --unisolated` on loopback ports of the test's own,
with the gateway (a tiny model), review, warden and idle culler as the hub's managed services.

- SIGKILL of the hub (out of memory, kill -9) takes its services with it: none lives on holding
  its port;
- Ctrl-C (SIGINT to the terminal's process group) returns within 10 s;
- a port held by a program that is not ours is a clear one-line error, exit 2, before anything
  starts; a leftover of our own on it is stopped."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from enclave.hub.launch import process_alive
from enclave.hub.tether import STACK_MARK
from enclave.registry.db import make_engine, upgrade
from tests.gateway_fixtures import tiny_model_dir  # noqa: F401  (fixture)
from tests.helpers import free_port
from tests.hub_launcher import cleanup, launch, port_free, processes_of, start_notebooks, wait_gone, wait_up

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process tree checks read /proc")

SERVICE_MARKERS = ("enclave.cli serve gateway", "enclave.cli serve review", "enclave.hub.warden",
                   "jupyterhub_idle_culler", "configurable-http-proxy")


@pytest.fixture
def model_dir(tiny_model_dir):  # noqa: F811
    return tiny_model_dir


def test_sigkill_of_the_hub_takes_its_services_with_it(tmp_path, model_dir):
    stack = launch(tmp_path, model_dir)
    seen: set[int] = set()
    try:
        wait_up(stack)
        services = processes_of(stack)
        seen = set(services)
        for marker in SERVICE_MARKERS:
            assert any(marker in cmd for cmd in services.values()), (marker, services)
        os.kill(stack.hub_pid(), signal.SIGKILL)  # the out-of-memory killer's way
        left = wait_gone(stack, timeout=15, also=seen)
        assert not left, f"outlived their hub: {left}"
        for name in ("gateway", "review", "public", "hub"):
            assert port_free(stack.ports[name]), f"{name} port {stack.ports[name]} still held"
        assert stack.cli.wait(timeout=15) == 2  # and says the hub died (one line, not a traceback)
        assert "Traceback" not in stack.log()
    finally:
        cleanup(stack, seen)


def test_services_die_with_the_hub_even_when_the_launcher_is_killed_too(tmp_path, model_dir):
    """The whole tree killed hard at once (launcher and hub): nobody is left to clean up, and
    still no service, nor the proxy, lives on (the kernel signals each when its parent dies)."""
    stack = launch(tmp_path, model_dir)
    seen: set[int] = set()
    try:
        wait_up(stack)
        seen = set(processes_of(stack))
        hub = stack.hub_pid()
        os.kill(stack.cli.pid, signal.SIGKILL)
        os.kill(hub, signal.SIGKILL)
        stack.cli.wait(timeout=10)
        left = wait_gone(stack, timeout=15, also=seen)
        assert not left, f"outlived their hub: {left}"
        for name in ("gateway", "review", "public"):
            assert port_free(stack.ports[name]), f"{name} port {stack.ports[name]} still held"
    finally:
        cleanup(stack, seen)


def test_ctrl_c_returns_within_10_seconds(tmp_path, model_dir):
    stack = launch(tmp_path, model_dir)
    seen: set[int] = set()
    try:
        wait_up(stack)
        seen = set(processes_of(stack))
        time.sleep(1)
        start = time.monotonic()
        os.killpg(stack.cli.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        code = stack.cli.wait(timeout=120)
        took = time.monotonic() - start
        print(f"Ctrl-C returned after {took:.1f} s")
        assert took < 10, f"Ctrl-C took {took:.1f} s to return:\n{stack.log()[-3000:]}"
        assert code in (0, 130), stack.log()[-3000:]
        assert not wait_gone(stack, timeout=3, also=seen)
        assert all(port_free(p) for p in stack.ports.values())
    finally:
        cleanup(stack, seen)


def test_ctrl_c_returns_within_10_seconds_with_a_notebook_running(tmp_path, model_dir):
    """A scholar's notebook server is running (developer mode: a local process) when the operator
    presses Ctrl-C: still back within 10 s, and the notebook server is gone too."""
    import secrets

    from enclave.registry import grants, people
    from enclave.registry.credentials import set_password
    from enclave.registry.db import session_scope
    from tests.conftest import OPERATOR
    from tests.helpers import approved_project

    db_url = f"sqlite:///{tmp_path / 'enclave.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Olga Operator", "op@example.org", roles=["operator"], bootstrap=True)
    approved_project(engine, "p1", "alice")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p1", session_hours=8)
        password = set_password(s, OPERATOR, "alice")
    engine.dispose()
    token = secrets.token_hex(24)
    stack = launch(tmp_path, model_dir, extra_env={"ENCLAVE_HUB_OPERATOR_TOKEN": token})
    seen: set[int] = set()
    try:
        wait_up(stack)
        start_notebooks(stack, token, {"alice": password}, "p1", timeout=120)
        seen = set(processes_of(stack))
        assert any("jupyterhub.singleuser" in cmd for cmd in processes_of(stack).values())
        start = time.monotonic()
        os.killpg(stack.cli.pid, signal.SIGINT)
        code = stack.cli.wait(timeout=120)
        took = time.monotonic() - start
        print(f"Ctrl-C with a notebook running returned after {took:.1f} s")
        assert took < 10, f"Ctrl-C took {took:.1f} s to return:\n{stack.log()[-3000:]}"
        assert code in (0, 130), stack.log()[-3000:]
        assert not wait_gone(stack, timeout=3, also=seen)
    finally:
        cleanup(stack, seen)


def test_a_port_held_by_another_program_is_a_clear_error(tmp_path, model_dir):
    ports = {name: free_port() for name in ("public", "hub", "proxy_api", "gateway", "review")}
    foreign = socket.socket()
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    foreign.bind(("127.0.0.1", ports["gateway"]))
    foreign.listen(1)
    stack = launch(tmp_path, model_dir, ports)
    try:
        code = stack.cli.wait(timeout=60)
        out = stack.log()
        assert code == 2, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("enclave: ")]
        assert len(errors) == 1 and str(ports["gateway"]) in errors[0] and "gateway" in errors[0], out[-3000:]
        assert "in use" in errors[0]
        assert "Traceback" not in out
        assert not (stack.state_dir / "jupyterhub.pid").exists()  # nothing was started
        assert not processes_of(stack)
    finally:
        foreign.close()
        cleanup(stack)


def test_a_leftover_of_ours_on_a_port_is_stopped_at_the_next_start(tmp_path, model_dir):
    """A service of an earlier run that survived (say the whole process tree was SIGKILLed on an
    older release) still holds the review port: the next start stops it and comes up."""
    ports = {name: free_port() for name in ("public", "hub", "proxy_api", "gateway", "review")}
    home = tmp_path / "home"
    squatter_code = ("import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                     f"s.bind(('127.0.0.1',{ports['review']}))\ns.listen(1)\ntime.sleep(600)\n")
    # An earlier stack's review service: it carries this enclave's mark (its hub state directory).
    leftover = subprocess.Popen([sys.executable, "-c", squatter_code], start_new_session=True,
                                env={**os.environ, "ENCLAVE_HOME": str(home.resolve()),
                                     STACK_MARK: str((home / "hub").resolve()), "JUPYTERHUB_SERVICE_NAME": "review"})
    deadline = time.monotonic() + 10
    while port_free(ports["review"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    stack = launch(tmp_path, model_dir, ports)
    try:
        wait_up(stack)
        assert leftover.wait(timeout=10) is not None
        assert "review" in stack.log() and str(leftover.pid) in stack.log()  # said what it stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            leftover.kill()
        leftover.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.cli.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            stack.cli.wait(timeout=30)
        cleanup(stack)


@pytest.mark.docker
def test_a_hard_stop_stops_the_notebook_containers_at_once(docker_client):
    """What a hub stopped hard after Ctrl-C leaves running: the enclave network's notebook
    containers (labelled by the spawner) stop together, each within a second even when it ignores
    SIGTERM; a container on the network without the label is not ours to stop."""
    import uuid

    from enclave.hub.image import build_image
    from enclave.hub.launch import stop_notebook_containers

    # The notebook image, as the e2e tests build it (cached by content hash: a no-op after them).
    base = build_image(Path(__file__).resolve().parents[1])
    name = f"enclave-stop-{uuid.uuid4().hex[:6]}"
    network = docker_client.networks.create(name, driver="bridge", internal=True)
    started = []
    try:
        for i in range(3):
            started.append(docker_client.containers.run(base, ["sleep", "600"], detach=True, network=name, auto_remove=True,
                                                        labels={"enclave.user": f"s{i}"}, name=f"{name}-nb{i}"))
        other = docker_client.containers.run(base, ["sleep", "600"], detach=True, network=name, auto_remove=True,
                                             name=f"{name}-other")
        started.append(other)
        t0 = time.monotonic()
        stopped = stop_notebook_containers(name, timeout=1)
        took = time.monotonic() - t0
        assert sorted(stopped) == [f"{name}-nb{i}" for i in range(3)]
        assert took < 6, f"stopping took {took:.1f} s"
        running = [c.name for c in docker_client.containers.list(filters={"network": name})]
        assert running == [f"{name}-other"]
    finally:
        for container in started:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        network.remove()


def test_a_second_start_over_a_running_enclave_is_refused_and_harms_nothing(tmp_path, model_dir):
    """A running stack is not a leftover: a second `serve hub` on the same state directory says so
    (exit 2, one line) and leaves the first one serving."""
    first = launch(tmp_path, model_dir)
    seen: set[int] = set()
    try:
        wait_up(first)
        seen = set(processes_of(first))
        second = launch(tmp_path, model_dir)  # same home, same ports
        try:
            assert second.cli.wait(timeout=60) == 2
            errors = [line for line in second.log().splitlines() if line.startswith("enclave: ")]
            assert len(errors) == 1 and "already running" in errors[0], second.log()[-2000:]
        finally:  # its CLI only: the processes of the same home are the first stack's
            if second.cli.poll() is None:
                os.killpg(second.cli.pid, signal.SIGKILL)
                second.cli.wait()
        assert first.cli.poll() is None
        assert all(process_alive(pid) for pid in seen), "the second start stopped part of the first"
        assert httpx.get(f"http://127.0.0.1:{first.ports['public']}/hub/api/", timeout=5).status_code == 200
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.cli.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.cli.wait(timeout=30)
        cleanup(first, seen)
