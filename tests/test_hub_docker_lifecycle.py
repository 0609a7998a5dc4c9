"""Starting and stopping the stack in Docker mode with scholars' notebook containers running, with
real signals and the real Docker engine (issue 11, item 12): `enclave serve hub` as an operator
runs it, on a private copy of the enclave network (tests/docker_stack.py) and ports of its own.

- Ctrl-C returns within 10 s with notebook containers running; they are stopped and removed
  (their work volumes stay), and no process of the stack is left; also when the hub cannot stop
  cleanly in time (a service that ignores SIGINT), where the launcher stops the containers itself;
- a notebook container outlives a hub killed hard; a revocation made while the hub is down stops
  that session as soon as the stack is back: the warden's first sweep, not a full interval later,
  with the reason on the audit chain."""
from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlmodel import select

from enclave.registry import grants, people, projects
from enclave.registry.credentials import set_password
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import AuditEvent
from tests.docker_stack import notebook_image, private_network, work_volume_template, work_volumes
from tests.gateway_fixtures import tiny_model_dir  # noqa: F401  (fixture)
from tests.helpers import OPERATOR, approved_project, free_port
from tests.hub_launcher import (PORT_NAMES, Launched, cleanup, ctrl_c, hub_answers, launch, processes_of,
                                stack_ports_free, start_notebooks, wait_gone, wait_up)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(420),
              pytest.mark.skipif(sys.platform != "linux", reason="process tree checks read /proc")]

PROJECT = "p1"


@pytest.fixture
def model_dir(tiny_model_dir):  # noqa: F811
    return tiny_model_dir


@pytest.fixture
def image(docker_client):
    return notebook_image()


@pytest.fixture
def net(docker_client, image):
    with private_network(docker_client) as net:
        yield net


@pytest.fixture
def scholars() -> list[str]:
    # Names no other test uses: DockerSpawner names the container after the user, and the
    # end-to-end tests may run notebook containers at the same time.
    tag = uuid.uuid4().hex[:6]
    return [f"lc{tag}a", f"lc{tag}b"]


def seed(tmp_path: Path, scholars: list[str]):
    """A registry with an operator and one approved project with `scholars` as members (a small
    grant each); returns it and the scholars' hub passwords."""
    engine = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Olga Operator", "op@example.org", roles=["operator"], bootstrap=True)
    approved_project(engine, PROJECT, scholars[0])
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, PROJECT, mem_bytes=512 * 1024**2, cpu=1.0, session_hours=8)
        for name in scholars[1:]:
            people.add_person(s, OPERATOR, name, name.title(), f"{name}@example.org", roles=["scholar"])
            projects.add_member(s, OPERATOR, PROJECT, name)
        passwords = {name: set_password(s, OPERATOR, name) for name in scholars}
    return engine, passwords


def docker_env(net, token: str, warden_interval: int = 2, **extra: str) -> dict[str, str]:
    return {"ENCLAVE_NETWORK": net.name, "ENCLAVE_BRIDGE": net.bridge, "ENCLAVE_SUBNET": net.subnet,
            "ENCLAVE_WORK_VOLUME_TEMPLATE": work_volume_template(net), "ENCLAVE_HUB_OPERATOR_TOKEN": token,
            "ENCLAVE_WARDEN_INTERVAL": str(warden_interval), **extra}


def containers_of(client, names: list[str], *, running_only: bool = True) -> list:
    return [c for name in names
            for c in client.containers.list(all=not running_only, filters={"label": f"enclave.user={name}"})]


def wait_no_containers(client, names: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while containers_of(client, names, running_only=False):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def container_events(client, container_id: str, since: float) -> list[str]:
    """What the engine did to a container since `since` (for a failure's message)."""
    events = client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                           filters={"container": container_id})
    return [f"{e.get('Action')} {e.get('Actor', {}).get('Attributes', {}).get('exitCode', '')}" for e in events]


def stopped_sessions(engine, scholar: str) -> list[dict]:
    with session_scope(engine) as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "session.stopped",
                                                 AuditEvent.subject == f"person:{scholar}")).all()
        return [json.loads(e.details) for e in events]


def assert_stopped_cleanly(stack: Launched, code: int, took: float, client, net, names: list[str],
                           seen: set[int]) -> None:
    print(f"Ctrl-C with {len(names)} notebook containers running returned after {took:.1f} s")
    assert took < 10, f"Ctrl-C took {took:.1f} s to return:\n{stack.log()[-3000:]}"
    assert code in (0, 130), stack.log()[-3000:]
    assert not containers_of(client, names), "notebook containers still run after Ctrl-C returned"
    assert wait_no_containers(client, names, timeout=5), "the stopped notebook containers were not removed"
    assert all(work_volumes(client, net, name) for name in names)  # the scholars' work stays
    assert not wait_gone(stack, timeout=3, also=seen)
    assert all(stack_ports_free(stack).values()), stack_ports_free(stack)
    assert "Traceback" not in stack.log()


def test_ctrl_c_with_notebook_containers_running_returns_within_10_seconds(tmp_path, model_dir, docker_client, net,
                                                                          scholars):
    engine, passwords = seed(tmp_path, scholars)
    token = secrets.token_hex(24)
    stack = launch(tmp_path, model_dir, extra_env=docker_env(net, token), unisolated=False, service_host=net.host_ip)
    seen: set[int] = set()
    try:
        wait_up(stack)
        start_notebooks(stack, token, passwords, PROJECT)
        running = containers_of(docker_client, scholars)
        assert len(running) == 2 and all(list(c.attrs["NetworkSettings"]["Networks"]) == [net.name] for c in running)
        seen = set(processes_of(stack))
        code, took = ctrl_c(stack)
        assert_stopped_cleanly(stack, code, took, docker_client, net, scholars, seen)
    finally:
        cleanup(stack, seen)
        engine.dispose()


# A gateway that will not stop on SIGINT (as the hub stops its services): the hub's own clean stop
# then waits on it for its 10 s, so the launcher's hard stop has to do the rest in time.
STUBBORN_GATEWAY = """
import http.server, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
arg = lambda name: sys.argv[sys.argv.index(name) + 1]
http.server.HTTPServer((arg("--host"), int(arg("--port"))), Answer).serve_forever()
"""


def test_ctrl_c_returns_within_10_seconds_when_the_hub_cannot_stop_cleanly(tmp_path, model_dir, docker_client, net,
                                                                          scholars):
    engine, passwords = seed(tmp_path, scholars)
    token = secrets.token_hex(24)
    ports = {name: free_port() for name in PORT_NAMES}
    gateway = shlex.join([sys.executable, "-c", STUBBORN_GATEWAY, "--host", net.host_ip,
                          "--port", str(ports["gateway"])])
    stack = launch(tmp_path, model_dir, ports, docker_env(net, token, ENCLAVE_GATEWAY_COMMAND=gateway),
                   unisolated=False, service_host=net.host_ip)
    seen: set[int] = set()
    try:
        wait_up(stack)
        start_notebooks(stack, token, passwords, PROJECT)
        assert len(containers_of(docker_client, scholars)) == 2
        seen = set(processes_of(stack))
        code, took = ctrl_c(stack)
        assert "stopping it hard" in stack.log(), stack.log()[-3000:]  # the case this test is about
        assert_stopped_cleanly(stack, code, took, docker_client, net, scholars, seen)
    finally:
        cleanup(stack, seen)
        engine.dispose()


def test_a_revocation_while_the_hub_is_down_stops_the_surviving_notebook_at_the_next_start(
        tmp_path, model_dir, docker_client, net, scholars):
    interval = 120  # the warden's: a first sweep that waited for it could not pass the test
    scholar = scholars[0]
    engine, passwords = seed(tmp_path, scholars[:1])
    token = secrets.token_hex(24)
    env = docker_env(net, token, warden_interval=interval)
    ports = {name: free_port() for name in PORT_NAMES}  # the same enclave, started twice
    first = launch(tmp_path, model_dir, ports, env, unisolated=False, service_host=net.host_ip)
    second: Launched | None = None
    seen: set[int] = set()
    try:
        wait_up(first)
        start_notebooks(first, token, passwords, PROJECT)
        (container,) = containers_of(docker_client, [scholar])
        seen = set(processes_of(first))

        killed = time.time()
        os.kill(first.hub_pid(), signal.SIGKILL)  # the out-of-memory killer's way
        assert first.cli.wait(timeout=30) == 2, first.log()[-3000:]
        assert not wait_gone(first, timeout=15, also=seen)
        assert [c.id for c in containers_of(docker_client, [scholar])] == [container.id], (
            f"the notebook container did not outlive its hub: {container_events(docker_client, container.id, killed)}"
            f"\n{first.log()[-3000:]}")

        with session_scope(engine) as s:  # the operator, while the hub is down
            projects.transition(s, OPERATOR, PROJECT, "revoke", reason="ethics approval withdrawn")
        assert not stopped_sessions(engine, scholar)
        assert containers_of(docker_client, [scholar])

        started = time.monotonic()
        second = launch(tmp_path, model_dir, ports, env, unisolated=False, service_host=net.host_ip)
        answered = gone = None
        deadline = started + 180
        while (answered is None or gone is None) and time.monotonic() < deadline:
            assert second.cli.poll() is None, second.log()[-4000:]
            if gone is None and not containers_of(docker_client, [scholar], running_only=False):
                gone = time.monotonic()
            if answered is None and hub_answers(second):
                answered = time.monotonic()
            time.sleep(0.2)
        assert answered is not None, f"the hub did not come back:\n{second.log()[-4000:]}"
        assert gone is not None, f"the revoked session's container still runs:\n{second.log()[-4000:]}"
        print(f"hub answering {answered - started:.1f} s after the start; the revoked notebook gone after "
              f"{gone - started:.1f} s ({gone - answered:+.1f} s from the hub answering; warden interval {interval} s)")
        assert gone - answered < 15, f"stopped {gone - answered:.1f} s after the hub answered (interval {interval} s)"
        assert gone - started < interval
        # The warden, not anything else, stopped it, for the revocation; and as the warden sees only
        # the servers the hub lists, the hub took the surviving container back.
        (event,) = stopped_sessions(engine, scholar)
        assert event["project"] == PROJECT
        assert event["reason"].startswith("revoked") and "ethics approval withdrawn" in event["reason"], event
        assert work_volumes(docker_client, net, scholar)  # the work stays

        wait_up(second)
        seen |= set(processes_of(second))
        code, took = ctrl_c(second)
        assert code in (0, 130) and took < 10, (code, took, second.log()[-3000:])
        assert not wait_gone(second, timeout=3, also=seen)
    finally:
        for stack in filter(None, (first, second)):
            cleanup(stack, seen)
        engine.dispose()
