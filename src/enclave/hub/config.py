"""Everything `hub_config/jupyterhub_config.py` sets, in one place with help text.

The launcher (`enclave serve hub`, `enclave up`) passes the deployment's facts in ENCLAVE_HUB_*
environment variables; secrets (proxy token, cookie secret file) come from the environment or
files under the state directory, never from this code."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from traitlets import Bool, Enum, Integer, Unicode, default
from traitlets.config import Configurable

from enclave.hub.network import EnclaveNetwork
from enclave.hub.spawner import SERVER_TOKEN_SCOPES

BANNER = ("DEVELOPER MODE (--unisolated): notebooks run as local processes with no container, network "
          "or file isolation. Never use it with real data.")


def _env(name: str, fallback: str = "") -> str:
    return os.environ.get(name, fallback)


class EnclaveHubSettings(Configurable):
    mode = Enum(["docker", "unisolated"], help="docker: locked-down containers; unisolated: developer mode.").tag(config=True)
    state_dir = Unicode(help="Where the hub keeps its database, cookie secret and logs.").tag(config=True)
    public_url = Unicode(help="Where browsers reach the hub (the proxy's public address).").tag(config=True)
    hub_port = Integer(8081, help="Hub API port, on the enclave bridge address (docker) or loopback.").tag(config=True)
    proxy_api_port = Integer(8003, help="configurable-http-proxy's API port (loopback only).").tag(config=True)
    gateway_port = Integer(8001, help="Model gateway port, as a hub service.").tag(config=True)
    review_port = Integer(8002, help="Review service port, as a hub service.").tag(config=True)
    image = Unicode(help="Notebook image, pinned by ID (sha256:...).").tag(config=True)
    network_name = Unicode("enclave-net", help="Internal Docker network of the notebooks.").tag(config=True)
    bridge = Unicode("enclave0", help="Linux bridge of that network (the firewall matches on it).").tag(config=True)
    subnet = Unicode("172.30.0.0/24", help="Subnet of that network.").tag(config=True)
    model_dir = Unicode(help="GPT-2 model directory the gateway serves.").tag(config=True)
    gateway_command = Unicode(help="Command line that runs the gateway (default: this Python's `enclave serve gateway`).").tag(config=True)
    review_command = Unicode(help="Command line that runs the review service; empty: no review service.").tag(config=True)
    idle_timeout = Integer(3600, help="Seconds of inactivity after which jupyterhub-idle-culler stops a server.").tag(config=True)
    warden_interval = Integer(15, help="Seconds between the warden's registry re-checks of running servers.").tag(config=True)
    work_volume_template = Unicode(
        "enclave-work-{username}", help="Docker volume holding each scholar's ~/work ({username} expands)."
    ).tag(config=True)
    gateway = Bool(True, help="Run the model gateway as a hub-managed service.").tag(config=True)

    @default("mode")
    def _d_mode(self):
        return _env("ENCLAVE_HUB_MODE", "docker")

    @default("state_dir")
    def _d_state(self):
        from enclave.envsettings import enclave_home

        return _env("ENCLAVE_HUB_STATE", str(enclave_home() / "hub"))

    @default("public_url")
    def _d_public(self):
        return _env("ENCLAVE_HUB_PUBLIC_URL", "http://127.0.0.1:8000")

    @default("hub_port")
    def _d_hub_port(self):
        return int(_env("ENCLAVE_HUB_PORT", "8081"))

    @default("proxy_api_port")
    def _d_proxy_port(self):
        return int(_env("ENCLAVE_HUB_PROXY_API_PORT", "8003"))

    @default("gateway_port")
    def _d_gateway_port(self):
        return int(_env("ENCLAVE_GATEWAY_PORT", "8001"))

    @default("review_port")
    def _d_review_port(self):
        return int(_env("ENCLAVE_REVIEW_PORT", "8002"))

    @default("image")
    def _d_image(self):
        return _env("ENCLAVE_NOTEBOOK_IMAGE")

    @default("network_name")
    def _d_net(self):
        return _env("ENCLAVE_NETWORK", "enclave-net")

    @default("bridge")
    def _d_bridge(self):
        return _env("ENCLAVE_BRIDGE", "enclave0")

    @default("subnet")
    def _d_subnet(self):
        return _env("ENCLAVE_SUBNET", "172.30.0.0/24")

    @default("model_dir")
    def _d_model(self):
        return _env("ENCLAVE_MODEL_DIR")

    @default("gateway_command")
    def _d_gwcmd(self):
        return _env("ENCLAVE_GATEWAY_COMMAND")

    @default("review_command")
    def _d_rvcmd(self):
        return _env("ENCLAVE_REVIEW_COMMAND")

    @default("idle_timeout")
    def _d_idle(self):
        return int(_env("ENCLAVE_IDLE_TIMEOUT", "3600"))

    @default("warden_interval")
    def _d_warden(self):
        return int(_env("ENCLAVE_WARDEN_INTERVAL", "15"))

    @default("work_volume_template")
    def _d_work_volume(self):
        return _env("ENCLAVE_WORK_VOLUME_TEMPLATE", "enclave-work-{username}")

    @default("gateway")
    def _d_gateway(self):
        return _env("ENCLAVE_HUB_GATEWAY", "1") not in ("0", "false", "no")

    @property
    def network(self) -> EnclaveNetwork:
        return EnclaveNetwork(self.network_name, self.bridge, self.subnet)

    @property
    def service_ip(self) -> str:
        """Where the hub and services listen for notebooks."""
        return self.network.host_ip if self.mode == "docker" else "127.0.0.1"


def configure(c, settings: EnclaveHubSettings | None = None) -> EnclaveHubSettings:
    """Apply the enclave's hub configuration to a JupyterHub config object `c`."""
    s = settings or EnclaveHubSettings()
    state = Path(s.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    ip = s.service_ip
    python = sys.executable
    enclave_db = os.environ.get("ENCLAVE_DB_URL", "")

    c.JupyterHub.bind_url = s.public_url
    c.JupyterHub.hub_bind_url = f"http://{ip}:{s.hub_port}"
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.authenticator_class = "enclave.hub.authenticator.EnclavePasswordAuthenticator"

    c.Spawner.server_token_scopes = list(SERVER_TOKEN_SCOPES)
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 90
    if s.mode == "docker":
        net = s.network
        c.JupyterHub.spawner_class = "enclave.hub.spawner.EnclaveDockerSpawner"
        c.EnclaveDockerSpawner.image = s.image
        c.EnclaveDockerSpawner.network_name = net.name
        c.EnclaveDockerSpawner.use_internal_ip = True
        c.EnclaveDockerSpawner.dns_servers = [net.dns_sink]
        c.EnclaveDockerSpawner.cmd = ["jupyterhub-singleuser"]
        c.EnclaveDockerSpawner.work_volume_template = s.work_volume_template
        spawner_cls = "EnclaveDockerSpawner"
    else:
        c.JupyterHub.spawner_class = "enclave.hub.spawner.EnclaveLocalSpawner"
        c.EnclaveLocalSpawner.notebook_dir = str(state / "unisolated-work")
        c.EnclaveLocalSpawner.cmd = [python, "-m", "jupyterhub.singleuser"]
        if os.geteuid() == 0:
            c.EnclaveLocalSpawner.args = ["--allow-root"]
        (state / "unisolated-work").mkdir(exist_ok=True)
        c.JupyterHub.template_vars = {"announcement": BANNER}
        spawner_cls = "EnclaveLocalSpawner"
    getattr(c, spawner_cls).gateway_url = f"http://{ip}:{s.gateway_port}"
    getattr(c, spawner_cls).review_url = f"http://{ip}:{s.review_port}" if s.review_command else ""

    env_common = {"ENCLAVE_DB_URL": enclave_db} if enclave_db else {}
    if os.environ.get("ENCLAVE_HOME"):
        env_common["ENCLAVE_HOME"] = os.environ["ENCLAVE_HOME"]
    if s.model_dir:
        env_common["ENCLAVE_MODEL_DIR"] = s.model_dir
    services = [
        {"name": "warden", "command": [python, "-m", "enclave.hub.warden", f"--interval={s.warden_interval}"],
         "environment": env_common},
        {"name": "idle-culler", "command": [python, "-m", "jupyterhub_idle_culler", f"--timeout={s.idle_timeout}",
                                            "--cull-every=300"]},
    ]
    if s.gateway:
        command = shlex.split(s.gateway_command) if s.gateway_command else [
            python, "-m", "enclave.cli", "serve", "gateway", "--host", ip, "--port", str(s.gateway_port)]
        if s.model_dir and "--model" not in command:
            command += ["--model", s.model_dir]
        services.append({"name": "gateway", "url": f"http://{ip}:{s.gateway_port}", "command": command,
                         "environment": env_common, "display": False})
    if s.review_command:
        review_env = dict(env_common)
        if s.model_dir:
            # The memorisation checks score exports with the served model itself (local, no quota),
            # and fingerprint its weights (ENCLAVE_MODEL_DIR).
            review_env.setdefault("ENCLAVE_REVIEW_SCORER_MODEL", s.model_dir)
        services.append({"name": "review", "url": f"http://{ip}:{s.review_port}",
                         "command": shlex.split(s.review_command), "environment": review_env,
                         "oauth_no_confirm": True})
    operator_token = os.environ.get("ENCLAVE_HUB_OPERATOR_TOKEN")
    if operator_token:
        # Operators' tooling (and the end-to-end tests) drive the hub REST API with this token.
        services.append({"name": "enclave-operator", "api_token": operator_token})
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = [
        # Scholars (and reviewers, operators) may call the services; a notebook's token gets these
        # only because the user holds them (server_token_scopes takes the intersection).
        {"name": "user", "scopes": ["self", "access:services!service=gateway", "access:services!service=review"]},
        {"name": "enclave-warden", "scopes": ["list:users", "read:users", "read:servers", "delete:servers"],
         "services": ["warden"]},
        {"name": "idle-culler", "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
         "services": ["idle-culler"]},
    ]
    if operator_token:
        c.JupyterHub.load_roles.append({"name": "enclave-operator", "services": ["enclave-operator"], "scopes": [
            "admin:users", "admin:servers", "list:users", "read:users", "read:servers", "tokens"]})
    return s
