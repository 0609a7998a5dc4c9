"""The compose deployment (deploy/compose.yaml, issue 15 item 1) on the local Docker engine with
Debian's docker-compose, end to end: images built offline (`enclave deploy build`, cached by
content), `docker-compose up`, an operator provisions a project in a one-shot `ops` container, a
scholar logs in through the published proxy and starts a real notebook container from the compose
hub, calls the gateway from inside it and submits an export; two reviewers approve it with their
own passwords and the file lands in the release store's volume. Also: the enclave network is
internal, the model is mounted read-only into the gateway only, only the proxy's port is
published (on loopback), and a notebook reaches neither the proxy's public port, the registry nor
any name. Torn down with `docker-compose down -v`; the images stay (they are the build cache).

Timings (build cold or warm, up, healthy) are printed; run with -s to see them."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.docker_stack import drop_chains, free_subnet
from tests.gateway_fixtures import tiny_model_dir  # noqa: F401  (fixture)
from tests.helpers import free_port
from tests.hub_stack import form_login

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"  # the checkout's: what the images were built for
PROJECT_SLUG = "study"
TIMINGS: dict[str, float] = {}


def _report(what: str, seconds: float) -> None:
    TIMINGS[what] = round(seconds, 1)
    print(f"compose timing: {what}: {seconds:.1f} s", flush=True)


def _snapshot(target: Path) -> Path:
    """What the images are built from, copied once: the checkout may change under a long test."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")
    for folder in ("src", "enclave_image", "deploy", "output_review", "hub_config"):
        shutil.copytree(REPO / folder, target / folder, ignore=skip, symlinks=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def images(docker_client, tmp_path_factory):
    from enclave.cli.deploy import build_images

    sources = _snapshot(tmp_path_factory.mktemp("compose-sources"))
    started = time.monotonic()
    first = build_images(sources, progress=lambda line: print(f"build: {line}", flush=True))
    _report(f"build ({'built ' + ', '.join(first.built) if first.built else 'nothing to build'})",
            time.monotonic() - started)
    started = time.monotonic()
    again = build_images(sources, progress=lambda line: None)
    _report("build again (cached by content hash)", time.monotonic() - started)
    assert again.built == [] and again.as_env() == first.as_env()  # nothing rebuilt: the cache held
    return first


class Stack:
    def __init__(self, name: str, env_file: Path, values: dict[str, str]):
        self.name, self.env_file, self.values = name, env_file, values
        self.public_url = f"http://127.0.0.1:{values['ENCLAVE_PUBLIC_PORT']}"

    def compose(self, *args: str, input: str | None = None, timeout: float = 600, check: bool = True
                ) -> subprocess.CompletedProcess:
        # A clean environment: compose interpolates the YAML from the env file alone.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
        argv = ["docker-compose", "-p", self.name, "--env-file", str(self.env_file), "-f", str(COMPOSE_FILE), *args]
        done = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, env=env,
                              cwd=COMPOSE_FILE.parent)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args[:3])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def ops(self, script: str, **env: str) -> str:
        """Run a shell script of `enclave` commands in a one-shot ops container."""
        flags = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        return self.compose("run", "--rm", "-T", *flags, "ops", "sh", "-ec", script).stdout

    def container(self, client, service: str):
        found = client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={self.name}",
                                                                   f"com.docker.compose.service={service}"]})
        assert found, f"no {service} container"
        return found[0]

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail=60", check=False).stdout[-12000:]


def _env_values(client, tag: str, model_dir: Path, images: dict[str, str]) -> dict[str, str]:
    subnet = free_subnet(client, "10.216")
    prefix = subnet.rsplit(".", 1)[0]
    values = {
        **images,
        "ENCLAVE_MODEL_DIR": str(model_dir),
        "ENCLAVE_PUBLIC_PORT": str(free_port()),
        "ENCLAVE_NETWORK": f"{tag}-enclave",
        "ENCLAVE_BRIDGE": f"{tag[:8]}c0",
        "ENCLAVE_SUBNET": subnet,
        "ENCLAVE_NOTEBOOK_RANGE": f"{prefix}.0/25",
        "ENCLAVE_COMPOSE_HUB_IP": f"{prefix}.200",
        "ENCLAVE_COMPOSE_GATEWAY_IP": f"{prefix}.201",
        "ENCLAVE_COMPOSE_REVIEW_IP": f"{prefix}.202",
        "ENCLAVE_COMPOSE_PRIVACY_IP": f"{prefix}.203",
        "POSTGRES_USER": "enclave",
        "POSTGRES_DB": "enclave",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "JPY_COOKIE_SECRET": secrets.token_hex(32),
        "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
        "ENCLAVE_GATEWAY_HUB_TOKEN": secrets.token_hex(32),
        "ENCLAVE_REVIEW_HUB_TOKEN": secrets.token_hex(32),
        "ENCLAVE_PRIVACY_HUB_TOKEN": secrets.token_hex(32),
        "ENCLAVE_HUB_OPERATOR_TOKEN": secrets.token_hex(32),
    }
    values["ENCLAVE_PUBLIC_URL"] = f"http://127.0.0.1:{values['ENCLAVE_PUBLIC_PORT']}"
    return values


def _readable_copy(source: Path, target: Path) -> Path:
    """The model where the gateway's user (uid 1000) can read it: pytest's temporary folders are 0700."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _healthy(client, stack: Stack, services: list[str], timeout: float) -> None:
    started = time.monotonic()
    deadline = started + timeout
    ready: set[str] = set()
    while True:
        states = {}
        for service in services:
            container = stack.container(client, service)
            container.reload()
            states[service] = (container.status, (container.attrs["State"].get("Health") or {}).get("Status"))
            if service not in ready and states[service][0] == "running" and states[service][1] in (None, "healthy"):
                ready.add(service)
                _report(f"{service} healthy after up -d", time.monotonic() - started)
        if ready == set(services):
            return
        assert not any(status == "exited" for status, _ in states.values()), f"{states}\n{stack.logs()}"
        assert time.monotonic() < deadline, f"not healthy in {timeout:.0f} s: {states}\n{stack.logs()}"
        time.sleep(1)


def _remove_notebooks(client, network: str) -> None:
    """What the hub spawned on the enclave network (compose does not know its containers)."""
    import docker.errors

    for container in client.containers.list(all=True, filters={"label": "enclave.user"}):
        if network in (container.attrs.get("NetworkSettings", {}).get("Networks") or {}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
    for volume in client.volumes.list(filters={"name": f"{network}-work-"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            volume.remove(force=True)


@pytest.fixture
def stack(docker_client, images, tiny_model_dir, tmp_path):  # noqa: F811
    tag = f"enc{uuid.uuid4().hex[:6]}"
    model_dir = _readable_copy(Path(tiny_model_dir), tmp_path / "model")
    values = _env_values(docker_client, tag, model_dir, images.as_env())
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env_file.chmod(0o600)
    stack = Stack(tag, env_file, values)
    try:
        started = time.monotonic()
        stack.compose("up", "-d")
        _report("docker-compose up -d", time.monotonic() - started)
        _healthy(docker_client, stack, ["db", "hub", "gateway", "review", "privacy"], timeout=240)
        _report("up until every service is healthy", time.monotonic() - started)
        yield stack
    finally:
        _remove_notebooks(docker_client, values["ENCLAVE_NETWORK"])
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
        _remove_notebooks(docker_client, values["ENCLAVE_NETWORK"])
        # The hub's firewall lives in its own namespace: nothing of it may be left on the host.
        assert drop_chains(values["ENCLAVE_BRIDGE"]) == []
        print(f"compose timings: {json.dumps(TIMINGS)}", flush=True)


PROVISION = """
enclave init --operator olive
enclave person add alice --name 'Alice Scholar' --email alice@uni.example --role scholar
enclave person add rita --name 'Rita Review' --email rita@rdc.example --role reviewer
enclave person add ravi --name 'Ravi Review' --email ravi@rdc.example --role reviewer
enclave project create {slug} --title 'Compose walk' --pi alice --purpose 'Check the compose stack'
enclave project approve {slug} --until 2099-12-31
enclave grant set {slug} --tokens 20000 --tokens-per-day 10000 --rpm 120 --max-tokens-per-request 64 --cpu 1 --mem 1G --session-hours 2
printf '%s\\n' "$ALICE_PW" | enclave person password alice --password-stdin
printf '%s\\n' "$RITA_PW" | enclave person password rita --password-stdin
printf '%s\\n' "$RAVI_PW" | enclave person password ravi --password-stdin
"""

# Runs inside the scholar's notebook container, with the environment the hub gave it.
IN_NOTEBOOK = r"""
import json, os, socket
from enclave import client

out = {"env": {k: os.environ.get(k, "") for k in ("ENCLAVE_GATEWAY_URL", "ENCLAVE_REVIEW_URL", "ENCLAVE_PROJECT")}}
gen = client.generate("Hello world", max_new_tokens=8, seed=1)
out["generated"] = gen.text
out["usage"] = dict(gen.usage) if not isinstance(gen.usage, dict) else gen.usage
path = "/home/scholar/work/finding.txt"
with open(path, "w") as f:
    f.write("Mean response length across the study: 12.5 tokens.\n")
out["export"] = client.export([path], justification="A single summary number for the paper")

def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False

hub = os.environ["JUPYTERHUB_API_URL"].split("//")[1].split(":")[0]
out["reach"] = {"hub_api": reach(hub, 8081), "proxy_public": reach(hub, 8000), "proxy_api": reach(hub, 8003),
                "host_port": reach(os.environ["HOST_ADDRESS"], int(os.environ["HOST_PORT"]))}
try:
    socket.getaddrinfo("db", 5432)
    out["resolves_db"] = True
except OSError:
    out["resolves_db"] = False
print("RESULT " + json.dumps(out))
"""


def test_compose_stack_walk(docker_client, stack):
    values = stack.values
    network = docker_client.networks.get(values["ENCLAVE_NETWORK"])
    assert network.attrs["Internal"] is True and not network.attrs.get("EnableIPv6")
    registry_net = docker_client.networks.get(f"{stack.name}_registry")
    assert registry_net.attrs["Internal"] is True

    # The model: read-only in the gateway, nowhere else. Ports: the proxy's only, on loopback.
    model_dir = values["ENCLAVE_MODEL_DIR"]
    for service in ("db", "hub", "gateway", "review", "privacy", "host-firewall"):
        container = stack.container(docker_client, service)
        mounts = [m for m in container.attrs["Mounts"] if m.get("Source") == model_dir]
        published = {port: bindings for port, bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).items()
                     if bindings}
        if service == "gateway":
            assert len(mounts) == 1 and mounts[0]["RW"] is False and mounts[0]["Destination"] == "/models/served"
        else:
            assert mounts == [], f"{service} sees the model"
        if service == "hub":
            assert published == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": values["ENCLAVE_PUBLIC_PORT"]}]}
        else:
            assert published == {}, f"{service} publishes {published}"
    assert set(stack.container(docker_client, "db").attrs["NetworkSettings"]["Networks"]) == {f"{stack.name}_registry"}

    # The operator provisions a project, its scholar and two reviewers, in a one-shot container.
    passwords = {name: secrets.token_urlsafe(12) for name in ("alice", "rita", "ravi")}
    started = time.monotonic()
    out = stack.ops(PROVISION.format(slug=PROJECT_SLUG), ENCLAVE_OPERATOR="olive",
                    ALICE_PW=passwords["alice"], RITA_PW=passwords["rita"], RAVI_PW=passwords["ravi"])
    _report("provisioning (ops container)", time.monotonic() - started)
    assert f"project {PROJECT_SLUG}: approved" in out, out

    # Alice logs in through the published proxy and starts her notebook from her own session.
    started = time.monotonic()
    with httpx.Client(base_url=stack.public_url, follow_redirects=True, timeout=120) as browser:
        assert form_login(browser, "alice", passwords["alice"]).status_code == 302, stack.logs()
        xsrf = browser.cookies.get("_xsrf", path="/hub/") or browser.cookies.get("_xsrf") or ""
        reply = browser.post("/hub/api/users/alice/server", json={"project": PROJECT_SLUG},
                             headers={"X-XSRFToken": xsrf})
        assert reply.status_code in (201, 202), f"{reply.status_code} {reply.text}\n{stack.logs()}"
        deadline = time.monotonic() + 180
        while not ((browser.get("/hub/api/users/alice", headers={"X-XSRFToken": xsrf}).json().get("servers") or {})
                   .get("", {}).get("ready")):
            assert time.monotonic() < deadline, f"alice's notebook did not start\n{stack.logs()}"
            time.sleep(1)
        _report("notebook spawn (login to ready)", time.monotonic() - started)
        # Her browser opens the server (through the hub's OAuth), as JupyterLab would, then its API.
        page = browser.get("/user/alice/lab")
        assert page.status_code == 200 and "/user/alice/" in str(page.url), f"{page.status_code} {page.url}"
        server_xsrf = browser.cookies.get("_xsrf", path="/user/alice/") or ""
        status = browser.get("/user/alice/api/status", headers={"X-XSRFToken": server_xsrf})
        assert status.status_code == 200, f"{status.status_code} {status.url} {status.text[:2000]}\n{stack.logs()}"

    notebooks = [c for c in docker_client.containers.list(filters={"label": "enclave.user=alice"})
                 if values["ENCLAVE_NETWORK"] in c.attrs["NetworkSettings"]["Networks"]]
    assert len(notebooks) == 1
    notebook = notebooks[0]
    assert set(notebook.attrs["NetworkSettings"]["Networks"]) == {values["ENCLAVE_NETWORK"]}
    assert notebook.attrs["HostConfig"]["ReadonlyRootfs"] is True

    # From inside the notebook: the gateway, an export, and what it cannot reach (a port this host
    # listens on, at the enclave bridge's own address, among them).
    bridge = values["ENCLAVE_BRIDGE"]
    rules = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True).stdout
    assert f"-A INPUT -i {bridge} -j ENC-CIN-{bridge}" in rules, rules
    host_address = network.attrs["IPAM"]["Config"][0].get("Gateway") or values["ENCLAVE_SUBNET"].rsplit(".", 1)[0] + ".1"
    with socket.create_server(("0.0.0.0", 0)) as listener:
        socket.create_connection((host_address, listener.getsockname()[1]), timeout=2).close()  # it listens there
        code, output = notebook.exec_run(["python", "-c", IN_NOTEBOOK], user="1000:1000", environment={
            "HOST_ADDRESS": host_address, "HOST_PORT": str(listener.getsockname()[1])})
    text = output.decode(errors="replace")
    assert code == 0, f"{text}\n{stack.logs()}"
    result = json.loads(text.split("RESULT ", 1)[1])
    assert result["env"]["ENCLAVE_GATEWAY_URL"] == f"http://{values['ENCLAVE_COMPOSE_GATEWAY_IP']}:8001"
    assert result["env"]["ENCLAVE_PROJECT"] == PROJECT_SLUG
    assert isinstance(result["generated"], str)
    assert result["reach"] == {"hub_api": True, "proxy_public": False, "proxy_api": False, "host_port": False}
    assert result["resolves_db"] is False
    export_id = result["export"]["id"]

    # Two reviewers, each with their own password, approve; the last approval releases.
    def show(reviewer: str) -> dict:
        return json.loads(stack.ops(f"enclave review show {export_id} --as {reviewer} --json"))

    deadline = time.monotonic() + 120
    view = show("rita")
    while view["verdict"] is None:
        assert time.monotonic() < deadline, f"the checks did not finish: {view}\n{stack.logs()}"
        time.sleep(2)
        view = show("rita")
    seen = ",".join(sorted(f["sha256"] for f in view["files"]))
    released = ""
    for reviewer in ("rita", "ravi"):
        out = stack.ops(f"enclave review approve {export_id} --as {reviewer} --seen {seen} --reason ok",
                        ENCLAVE_REVIEWER_PASSWORD=passwords[reviewer])
        if "released to" in out:
            released = out.rsplit("released to ", 1)[1].strip()
            break
    assert released, out

    # What alice's server sent her browser was counted in the hub's namespace and charged by the
    # warden to her session on the registry (the lock-down's metering is real here too).
    deadline = time.monotonic() + 60
    while True:
        live = json.loads(stack.ops("enclave session list --live --user alice --json"))
        assert len(live) == 1 and live[0]["project"] == PROJECT_SLUG, live
        if live[0]["egress_bytes"] >= len(page.content):
            break
        assert time.monotonic() < deadline, f"no egress charged: {live}\n{stack.logs()}"
        time.sleep(2)

    # The approved file is in the release store's volume, with its manifest.
    volume = docker_client.volumes.get(f"{stack.name}_releases")
    store = Path(volume.attrs["Mountpoint"])
    relative = Path(released).relative_to("/srv/releases")
    files = {p.relative_to(store / relative).as_posix(): p for p in (store / relative).rglob("*") if p.is_file()}
    assert any(name.endswith("finding.txt") for name in files), files
    finding = next(p for name, p in files.items() if name.endswith("finding.txt"))
    assert finding.read_text() == "Mean response length across the study: 12.5 tokens.\n"
    assert any(name.endswith("manifest.json") for name in files), files
    assert not stat.S_IMODE(finding.stat().st_mode) & 0o002
