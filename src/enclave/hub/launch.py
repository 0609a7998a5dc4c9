"""Bring the hub up: the Docker engine, the notebook image, the enclave network and firewall,
then JupyterHub (which runs the proxy, the gateway, the review service, the warden and the idle
culler as its managed services, so Ctrl-C on the hub stops them all).

`serve_hub` is the whole sequence, as `enclave serve hub` and `enclave up` run it; the steps
(`prepare_docker`, `hub_environment`, `start_hub`, `stop_leftover_proxy`) are public for the tests'
and benchmarks' own stacks. What cannot start raises `enclave.errors.Unavailable`.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy.engine import Engine

from enclave.envsettings import database_url, enclave_home, env_str
from enclave.errors import Unavailable
from enclave.hub.config import BANNER, EnclaveHubSettings
from enclave.hub.image import ImageBuildError, build_image
from enclave.hub.network import FirewallError, ensure_network, install
from enclave.registry.credentials import set_password
from enclave.registry.db import session_scope
from enclave.registry.people import Role, list_people


class HubLaunchError(Unavailable):
    """A part of the hub's stack cannot start (proxy missing, configuration, image, firewall)."""


class DockerUnavailable(HubLaunchError):
    """No Docker engine answers, and none can be started here."""


REPO_ROOT = Path(__file__).resolve().parents[3]


def docker_client(timeout: int = 120):
    import docker

    return docker.DockerClient(base_url=env_str("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=timeout)


def _ping() -> bool:
    try:
        client = docker_client(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, daemon starting, permission: all mean "not usable yet"
        return False


def ensure_dockerd(log_dir: Path, wait_s: float = 60) -> None:
    """Use a running Docker engine, or start Debian's dockerd when we are root."""
    if _ping():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine: dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine running, and starting dockerd needs root")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "dockerd.log", "ab")
    subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _ping():
            return
        time.sleep(0.5)
    raise DockerUnavailable(f"dockerd did not answer within {wait_s:.0f} s (see {log_dir / 'dockerd.log'})")


def _say(line: str) -> None:
    # Flushed: the hub's own log goes to the same terminal right after.
    print(line, flush=True)


def prepare_docker(settings: EnclaveHubSettings, log_dir: Path, progress: Callable[[str], None] = _say) -> str:
    """Engine, image, network, firewall; returns the notebook image ID."""
    ensure_dockerd(log_dir)
    progress("docker: engine up; building the notebook image when missing (minutes the first time)")
    try:
        image_id = build_image(REPO_ROOT)
    except ImageBuildError as exc:
        raise HubLaunchError(str(exc)) from None
    ports = [settings.hub_port, settings.gateway_port, settings.review_port]
    client = docker_client()
    try:
        ensure_network(client, settings.network)
        install(settings.network, ports)
    except FirewallError as exc:
        raise HubLaunchError(str(exc)) from None
    finally:
        client.close()
    progress(f"docker: network {settings.network_name} ({settings.subnet}) behind the firewall; "
             f"notebooks reach only {settings.service_ip} ports {', '.join(map(str, ports))}")
    return image_id


def hub_environment(settings: EnclaveHubSettings, image_id: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The hub process's environment: ours, plus the settings as the variables the hub reads back
    (`EnclaveHubSettings.to_environment`), the notebook image and the proxy's token; `extra` last."""
    env = dict(os.environ)
    env.update(settings.to_environment())
    # Absolute: the hub and its services run in the state directory, where a relative
    # ENCLAVE_HOME (the default is ./var) would point somewhere else.
    env["ENCLAVE_HOME"] = str(Path(settings.enclave_home or enclave_home()).resolve())
    env["ENCLAVE_DB_URL"] = settings.db_url or database_url()
    env["PYTHONUNBUFFERED"] = "1"
    if image_id:
        env["ENCLAVE_NOTEBOOK_IMAGE"] = image_id
    # The proxy's API token is a secret: from the environment if the operator set one, else fresh.
    env.setdefault("CONFIGPROXY_AUTH_TOKEN", secrets.token_hex(32))
    env.update(extra or {})
    return env


def config_file() -> Path:
    path = REPO_ROOT / "hub_config" / "jupyterhub_config.py"
    if not path.exists():
        raise HubLaunchError(f"hub configuration not found at {path}")
    return path


def start_hub(env: dict[str, str], state_dir: Path, log_path: Path | None = None) -> subprocess.Popen:
    if shutil.which("configurable-http-proxy", path=env.get("PATH")) is None:
        raise HubLaunchError("configurable-http-proxy is missing (npm install -g configurable-http-proxy; `make` does it)")
    state_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else None
    return subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config_file())], cwd=state_dir, env=env,
                            stdout=out, stderr=subprocess.STDOUT if out else None)


def stop_leftover_proxy(state_dir: Path) -> None:
    """JupyterHub leaves its proxy running when it dies abnormally (it can adopt it on restart);
    `enclave` owns the whole stack, so it stops the proxy too."""
    pid_file = Path(state_dir) / "proxy.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def review_command(settings: EnclaveHubSettings) -> str:
    """`enclave serve review` with this interpreter, for the hub to run as its managed service."""
    return shlex.join([sys.executable, "-m", "enclave.cli", "serve", "review", "--host", settings.service_ip,
                       "--port", str(settings.review_port)])


def reset_passwords(engine: Engine, usernames: Iterable[str]) -> dict[str, str]:
    """Fresh hub passwords for `usernames`, set on the first operator's authority. Passwords are
    stored hashed only, so a demo's are reset at every start to be shown to whoever runs it."""
    with session_scope(engine) as session:
        actor = next(p.username for p in list_people(session) if p.has_role(Role.operator))
        return {username: set_password(session, actor, username) for username in usernames}


def wait_for_hub(hub: subprocess.Popen) -> int:
    """Wait until the hub exits; Ctrl-C or a service manager's SIGTERM stops it (SIGINT, then a kill
    after 30 s). Returns its exit status."""

    def on_term(signum, frame):  # a service manager's stop: same as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return hub.wait()
    except KeyboardInterrupt:
        hub.send_signal(signal.SIGINT)
        try:
            return hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            return hub.wait()


def serve_hub(*, unisolated: bool, public_url: str, model_dir: str, log_dir: Path,
              logins: dict[str, str] | None = None, progress: Callable[[str], None] = _say) -> None:
    """Bring the whole hub up and run it until it exits or is stopped (`enclave serve hub`, `enclave
    up`): Docker, image, network and firewall unless `unisolated`, then JupyterHub with the gateway
    serving `model_dir`, review, warden and idle culler. `logins` (user -> password) are shown once
    the hub is up. Raises Unavailable when a part cannot start or the hub exits abnormally."""
    settings = EnclaveHubSettings(mode="unisolated" if unisolated else "docker", public_url=public_url,
                                  model_dir=model_dir)
    settings.review_command = review_command(settings)
    image_id = None
    if unisolated:
        print(f"WARNING: {BANNER}", file=sys.stderr, flush=True)
    else:
        try:
            image_id = prepare_docker(settings, log_dir, progress=progress)
        except DockerUnavailable as exc:
            raise DockerUnavailable(f"{exc}. Without a Docker engine, `enclave up --unisolated` runs a developer "
                                    "mode with no isolation (never for real data)") from None
    hub = start_hub(hub_environment(settings, image_id), Path(settings.state_dir))
    progress(f"hub: {settings.public_url}  (model gateway for notebooks: "
             f"http://{settings.service_ip}:{settings.gateway_port}/v1/)")
    for username, password in (logins or {}).items():
        progress(f"  log in as {username:<9} password {password}")
    code = wait_for_hub(hub)
    stop_leftover_proxy(Path(settings.state_dir))
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise Unavailable(f"the hub exited with status {code}; see its log above")
