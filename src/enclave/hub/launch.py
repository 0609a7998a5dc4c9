"""Bring the hub up: the Docker engine, the notebook image, the enclave network and firewall,
then JupyterHub (which runs the proxy, the gateway, the review service, the warden and the idle
culler as its managed services, so Ctrl-C on the hub stops them all)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from enclave.hub.config import EnclaveHubSettings
from enclave.hub.network import ensure_network, install


class HubLaunchError(RuntimeError):
    pass


class DockerUnavailable(HubLaunchError):
    pass


REPO_ROOT = Path(__file__).resolve().parents[3]


def docker_client(timeout: int = 120):
    import docker

    return docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=timeout)


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


def prepare_docker(settings: EnclaveHubSettings, log_dir: Path, progress=print) -> str:
    """Engine, image, network, firewall; returns the notebook image ID."""
    from enclave.hub.image import build_image

    ensure_dockerd(log_dir)
    progress("docker: engine up; building the notebook image when missing (minutes the first time)")
    image_id = build_image(REPO_ROOT)
    client = docker_client()
    try:
        ensure_network(client, settings.network)
    finally:
        client.close()
    ports = [settings.hub_port, settings.gateway_port, settings.review_port]
    install(settings.network, ports)
    progress(f"docker: network {settings.network_name} ({settings.subnet}) behind the firewall; "
             f"notebooks reach only {settings.service_ip} ports {', '.join(map(str, ports))}")
    return image_id


def hub_environment(settings: EnclaveHubSettings, image_id: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    from enclave.envsettings import database_url, enclave_home

    env = dict(os.environ)
    # Absolute: the hub and its services run in the state directory, where a relative
    # ENCLAVE_HOME (the default is ./var) would point somewhere else.
    env["ENCLAVE_HOME"] = str(enclave_home())
    env.setdefault("ENCLAVE_DB_URL", database_url())
    env.update({
        "ENCLAVE_HUB_MODE": settings.mode,
        "ENCLAVE_HUB_STATE": settings.state_dir,
        "ENCLAVE_HUB_PUBLIC_URL": settings.public_url,
        "ENCLAVE_HUB_PORT": str(settings.hub_port),
        "ENCLAVE_HUB_PROXY_API_PORT": str(settings.proxy_api_port),
        "ENCLAVE_GATEWAY_PORT": str(settings.gateway_port),
        "ENCLAVE_REVIEW_PORT": str(settings.review_port),
        "ENCLAVE_NETWORK": settings.network_name,
        "ENCLAVE_BRIDGE": settings.bridge,
        "ENCLAVE_SUBNET": settings.subnet,
        "ENCLAVE_IDLE_TIMEOUT": str(settings.idle_timeout),
        "ENCLAVE_WARDEN_INTERVAL": str(settings.warden_interval),
        "ENCLAVE_HUB_GATEWAY": "1" if settings.gateway else "0",
        "ENCLAVE_WORK_VOLUME_TEMPLATE": settings.work_volume_template,
        "PYTHONUNBUFFERED": "1",
    })
    if settings.model_dir:
        env["ENCLAVE_MODEL_DIR"] = settings.model_dir
    if settings.review_command:
        env["ENCLAVE_REVIEW_COMMAND"] = settings.review_command
    if settings.gateway_command:
        env["ENCLAVE_GATEWAY_COMMAND"] = settings.gateway_command
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
    import signal

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
