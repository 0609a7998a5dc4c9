"""`enclave serve hub` run as an operator runs it, for the tests of starting and stopping the stack
with real processes and real signals: the CLI in a process group of its own (as a terminal's
foreground job), on ports of the test's own, and the readers that find every process of that
stack again from /proc (its descendants, and whatever carries its enclave home)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from enclave.hub.launch import process_alive, process_cmdline, process_environ
from enclave.registry.db import make_engine, upgrade
from tests.helpers import free_port
from tests.hub_stack import Browser

PORT_NAMES = ("public", "hub", "proxy_api", "gateway", "review")


@dataclass
class Launched:
    cli: subprocess.Popen
    home: Path
    ports: dict[str, int]
    log_path: Path
    service_host: str = "127.0.0.1"  # where the hub API, gateway and review listen (the bridge in Docker mode)

    @property
    def state_dir(self) -> Path:
        return self.home / "hub"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['public']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def hub_pid(self) -> int:
        return int((self.state_dir / "jupyterhub.pid").read_text().strip())


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def processes_of(stack: Launched, also: set[int] = frozenset()) -> dict[int, str]:
    """Every live process of this stack, the CLI itself left out: its descendants now, `also`
    (descendants seen earlier: a service whose hub died is re-parented), and any process whose
    environment names this stack's home (the hub passes it to its services and the proxy)."""
    found = {}
    candidates = descendants(stack.cli.pid) | set(also)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and str(stack.home) in process_environ(int(entry.name)).get("ENCLAVE_HOME", ""):
            candidates.add(int(entry.name))
    for pid in candidates - {os.getpid(), stack.cli.pid}:
        if process_alive(pid):
            found[pid] = process_cmdline(pid)
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def stack_ports_free(stack: Launched) -> dict[str, bool]:
    """Each of the stack's ports, bindable again where it listened?"""
    on_loopback = ("public", "proxy_api")
    return {name: port_free(port, "127.0.0.1" if name in on_loopback else stack.service_host)
            for name, port in stack.ports.items()}


def _listening(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _default_signals():
    # A terminal's foreground job: SIGINT as the shell leaves it (a non-interactive shell or a
    # background job would hand on an ignored SIGINT, which no operator's terminal does).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def launch(tmp_path: Path, model_dir: Path, ports: dict[str, int] | None = None, extra_env: dict | None = None,
           *, unisolated: bool = True, service_host: str = "127.0.0.1") -> Launched:
    """`enclave serve hub` with its home and registry under `tmp_path` (the same `tmp_path` and
    `ports` again: the same enclave started again). Docker mode (`unisolated=False`) takes the
    enclave network from `extra_env` (ENCLAVE_NETWORK, ENCLAVE_BRIDGE, ENCLAVE_SUBNET), and
    `service_host` is then its bridge address."""
    home = tmp_path / "home"
    db_url = f"sqlite:///{tmp_path / 'enclave.db'}"
    if not (tmp_path / "enclave.db").exists():
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()
    ports = ports or {name: free_port() for name in PORT_NAMES}
    env = dict(os.environ)
    env.update({
        "ENCLAVE_HOME": str(home), "ENCLAVE_DB_URL": db_url, "PYTHONUNBUFFERED": "1",
        "ENCLAVE_HUB_PORT": str(ports["hub"]), "ENCLAVE_HUB_PROXY_API_PORT": str(ports["proxy_api"]),
        "ENCLAVE_GATEWAY_PORT": str(ports["gateway"]), "ENCLAVE_REVIEW_PORT": str(ports["review"]),
        "ENCLAVE_WARDEN_INTERVAL": "2",
    })
    for name in ("ENCLAVE_HUB_STATE", "ENCLAVE_HUB_OPERATOR_TOKEN", "CONFIGPROXY_AUTH_TOKEN"):
        env.pop(name, None)
    env.update(extra_env or {})
    log_path = tmp_path / f"cli-{len(list(tmp_path.glob('cli-*.log')))}.log"
    out = open(log_path, "ab")
    argv = [sys.executable, "-m", "enclave.cli", "serve", "hub", "--public-url", f"http://127.0.0.1:{ports['public']}",
            "--model", str(model_dir)]
    if unisolated:
        argv.insert(argv.index("hub") + 1, "--unisolated")
    cli = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
        preexec_fn=_default_signals)
    out.close()
    return Launched(cli, home, ports, log_path, service_host)


def hub_answers(stack: Launched) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{stack.public_url}/hub/api/", timeout=2).status_code == 200
    return False


def wait_up(stack: Launched, timeout: float = 150) -> None:
    """Until the hub answers through the proxy and the gateway and review listen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.cli.poll() is not None:
            raise AssertionError(f"the CLI exited with {stack.cli.returncode}:\n{stack.log()[-4000:]}")
        if (hub_answers(stack) and _listening(stack.service_host, stack.ports["gateway"])
                and _listening(stack.service_host, stack.ports["review"])):
            return
        time.sleep(0.5)
    raise AssertionError(f"the stack did not come up in {timeout:.0f} s:\n{stack.log()[-4000:]}")


def start_notebooks(stack: Launched, operator_token: str, passwords: dict[str, str], project: str,
                    timeout: float = 180) -> None:
    """Each scholar (name -> hub password) logs in through the hub's login form and starts their
    server for `project` from their own session, as the spawn page does; returns when every one is
    ready (as the `enclave-operator` service, `operator_token`, sees it)."""
    for name, password in passwords.items():
        browser = Browser(stack)
        try:
            assert browser.login(name, password).status_code == 302, f"{name} could not log in"
            reply = browser.hub_api("POST", f"/users/{name}/server", json={"project": project})
            assert reply.status_code in (201, 202), reply.text
        finally:
            browser.close()
    with httpx.Client(base_url=f"{stack.public_url}/hub/api", headers={"Authorization": f"token {operator_token}"},
                      timeout=60) as api:
        deadline = time.monotonic() + timeout
        for name in passwords:
            while not (api.get(f"/users/{name}").json().get("servers") or {}).get("", {}).get("ready"):
                assert time.monotonic() < deadline, f"{name}'s notebook did not start:\n{stack.log()[-4000:]}"
                assert stack.cli.poll() is None, stack.log()[-4000:]
                time.sleep(0.5)


def wait_gone(stack: Launched, timeout: float, also: set[int] = frozenset()) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_of(stack, also)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def ctrl_c(stack: Launched, timeout: float = 120) -> tuple[int, float]:
    """What the terminal does on Ctrl-C (SIGINT to the foreground process group); returns the
    CLI's exit status and the seconds it took to return."""
    start = time.monotonic()
    os.killpg(stack.cli.pid, signal.SIGINT)
    code = stack.cli.wait(timeout=timeout)
    return code, time.monotonic() - start


def cleanup(stack: Launched, also: set[int] = frozenset()) -> None:
    """Whatever a failed test left: this stack's processes only."""
    also = set(also) | descendants(stack.cli.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(stack.cli.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        stack.cli.wait(timeout=10)
    for pid, cmd in processes_of(stack, also).items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
