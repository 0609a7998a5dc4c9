"""Everything `hub_config/jupyterhub_config.py` sets, in one place with help text.

The launcher (`enclave serve hub`, `enclave up`) passes the deployment's facts in ENCLAVE_HUB_*
environment variables; secrets (proxy token, cookie secret file) come from the environment or
files under the state directory, never from this code."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from typing import Mapping

from traitlets import Bool, Enum, Integer, Unicode, default
from traitlets.config import Configurable

from enclave.envsettings import enclave_home
from enclave.errors import SettingsError
from enclave.hub.authenticator import OPERATOR_ROLE
from enclave.hub.network import EnclaveNetwork
from enclave.hub.spawner import SERVER_TOKEN_SCOPES
from enclave.hub.tether import command as tethered

BANNER = ("DEVELOPER MODE (--unisolated): notebooks run as local processes with no container, network "
          "or file isolation. Never use it with real data.")


class EnclaveHubSettings(Configurable):
    """The hub's deployment facts. Each trait is declared once, with its default and, in its
    `env` tag, the variable the launcher passes it in (`to_environment` writes them, the hub
    process reads them back at start-up); explicit constructor or config values win."""

    mode = Enum(["docker", "unisolated"], "docker",
                help="docker: locked-down containers; unisolated: developer mode.").tag(config=True, env="ENCLAVE_HUB_MODE")
    state_dir = Unicode(help="Where the hub keeps its database, cookie secret and logs (default: $ENCLAVE_HOME/hub)."
                        ).tag(config=True, env="ENCLAVE_HUB_STATE")
    public_url = Unicode("http://127.0.0.1:8000", help="Where browsers reach the hub (the proxy's public address)."
                         ).tag(config=True, env="ENCLAVE_HUB_PUBLIC_URL")
    hub_port = Integer(8081, help="Hub API port, on the enclave bridge address (docker) or loopback."
                       ).tag(config=True, env="ENCLAVE_HUB_PORT")
    proxy_api_port = Integer(8003, help="configurable-http-proxy's API port (loopback only)."
                             ).tag(config=True, env="ENCLAVE_HUB_PROXY_API_PORT")
    gateway_port = Integer(8001, help="Model gateway port, as a hub service.").tag(config=True, env="ENCLAVE_GATEWAY_PORT")
    review_port = Integer(8002, help="Review service port, as a hub service.").tag(config=True, env="ENCLAVE_REVIEW_PORT")
    privacy_port = Integer(8004, help="Privacy service (DP statistics) port, as a hub service."
                           ).tag(config=True, env="ENCLAVE_PRIVACY_PORT")
    access_port = Integer(8005, help="Access-by-application pages' port, as a hub service (loopback only: "
                                     "browsers reach it through the proxy, notebooks never)."
                          ).tag(config=True, env="ENCLAVE_ACCESS_PORT")
    image = Unicode(help="Notebook image, pinned by ID (sha256:...).").tag(config=True, env="ENCLAVE_NOTEBOOK_IMAGE")
    network_name = Unicode("enclave-net", help="Internal Docker network of the notebooks."
                           ).tag(config=True, env="ENCLAVE_NETWORK")
    bridge = Unicode("enclave0", help="Linux bridge of that network (the firewall matches on it)."
                     ).tag(config=True, env="ENCLAVE_BRIDGE")
    subnet = Unicode("172.30.0.0/24", help="Subnet of that network.").tag(config=True, env="ENCLAVE_SUBNET")
    model_dir = Unicode(help="GPT-2 model directory the gateway serves.").tag(config=True, env="ENCLAVE_MODEL_DIR")
    gateway_command = Unicode(help="Command line that runs the gateway (default: this Python's `enclave serve gateway`)."
                              ).tag(config=True, env="ENCLAVE_GATEWAY_COMMAND")
    review_command = Unicode(help="Command line that runs the review service; empty: no review service."
                             ).tag(config=True, env="ENCLAVE_REVIEW_COMMAND")
    privacy_command = Unicode(help="Command line that runs the privacy service (DP statistics charged to each "
                                   "project's budget); empty: no privacy service."
                              ).tag(config=True, env="ENCLAVE_PRIVACY_COMMAND")
    access_command = Unicode(help="Command line that runs the access-by-application pages (applicants, panel "
                                  "members); empty: no access service."
                             ).tag(config=True, env="ENCLAVE_ACCESS_COMMAND")
    idle_timeout = Integer(3600, help="Seconds of inactivity after which jupyterhub-idle-culler stops a server."
                           ).tag(config=True, env="ENCLAVE_IDLE_TIMEOUT")
    warden_interval = Integer(15, help="Seconds between the warden's registry re-checks of running servers."
                              ).tag(config=True, env="ENCLAVE_WARDEN_INTERVAL")
    work_volume_template = Unicode(
        "enclave-work-{username}-{project}",
        help="Docker volume holding a scholar's ~/work for one project ({username} and {project} expand; both required)."
    ).tag(config=True, env="ENCLAVE_WORK_VOLUME_TEMPLATE")
    egress_interval = Integer(2, help="Seconds between the warden's readings of the browser-egress counters."
                              ).tag(config=True, env="ENCLAVE_EGRESS_INTERVAL")
    gateway = Bool(True, help="Run the model gateway as a hub-managed service.").tag(config=True, env="ENCLAVE_HUB_GATEWAY")
    enclave_home = Unicode(help="The enclave's home directory, passed on to the services (default: $ENCLAVE_HOME)."
                           ).tag(config=True, env="ENCLAVE_HOME")
    db_url = Unicode(help="The registry database, passed on to the services (default: $ENCLAVE_DB_URL, else SQLite "
                          "under the enclave home).").tag(config=True, env="ENCLAVE_DB_URL")
    operator_token = Unicode(help="API token of the `enclave-operator` hub service (operators' tooling and the "
                                  "end-to-end tests drive the hub REST API with it); empty: no such service."
                             ).tag(config=True, env="ENCLAVE_HUB_OPERATOR_TOKEN")

    def __init__(self, environ: Mapping[str, str] | None = None, **kwargs):
        super().__init__(**kwargs)
        environ = os.environ if environ is None else environ
        configured = set(kwargs) | set(self.config.get(type(self).__name__, {}))
        for name, trait in self.traits(env=lambda v: v is not None).items():
            raw = environ.get(trait.metadata["env"])
            if name in configured or raw is None or raw == "":
                continue
            if isinstance(trait, Bool):
                value = raw.strip().lower() not in ("0", "false", "no")
            elif isinstance(trait, Integer):
                try:
                    value = int(raw)
                except ValueError:
                    raise SettingsError(f"{trait.metadata['env']} must be a whole number, not {raw!r}") from None
            else:
                value = raw
            setattr(self, name, value)

    @default("state_dir")
    def _d_state(self):
        return str(Path(self.enclave_home or enclave_home()) / "hub")

    def to_environment(self) -> dict[str, str]:
        """The settings as the variables the hub process reads back (empty values left out)."""
        out = {}
        for name, trait in self.traits(env=lambda v: v is not None).items():
            value = getattr(self, name)
            if isinstance(trait, Bool):
                out[trait.metadata["env"]] = "1" if value else "0"
            elif value not in ("", None):
                out[trait.metadata["env"]] = str(value)
        return out

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

    c.JupyterHub.bind_url = s.public_url
    c.JupyterHub.hub_bind_url = f"http://{ip}:{s.hub_port}"
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    # The proxy and every managed service run tethered to this hub process: killed hard, it takes
    # them with it (JupyterHub starts them in sessions of their own), and they carry the stack's
    # mark, by which `enclave up` finds leftovers (enclave.hub.tether).
    hub_pid, stack = os.getpid(), str(state.resolve())

    def tether(argv: list[str]) -> list[str]:
        return tethered(argv, parent=hub_pid, stack=stack)

    c.ConfigurableHTTPProxy.command = tether(["configurable-http-proxy"])
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
        c.EnclaveDockerSpawner.bridge = net.bridge  # each container's browser egress is counted there
        # Containers are named after the network (`enclave-net-alice`), so two stacks on one Docker
        # engine (a test's and the real one) never take each other's containers for leftovers.
        c.EnclaveDockerSpawner.prefix = net.name
        # `docker stop` waits this long for a notebook server before killing it (Docker's default
        # is 10 s, and DockerSpawner stops containers one at a time): the hub stops promptly.
        c.EnclaveDockerSpawner.extra_create_kwargs = {"stop_timeout": 2}
        spawner_cls = "EnclaveDockerSpawner"
    else:
        c.JupyterHub.spawner_class = "enclave.hub.spawner.EnclaveLocalSpawner"
        c.EnclaveLocalSpawner.notebook_dir = str(state / "unisolated-work")
        # Tethered like the services: a developer's notebook servers stop with their hub.
        c.EnclaveLocalSpawner.cmd = tether([python, "-m", "jupyterhub.singleuser"])
        if os.geteuid() == 0:
            c.EnclaveLocalSpawner.args = ["--allow-root"]
        (state / "unisolated-work").mkdir(exist_ok=True)
        c.JupyterHub.template_vars = {"announcement": BANNER}
        spawner_cls = "EnclaveLocalSpawner"
    getattr(c, spawner_cls).gateway_url = f"http://{ip}:{s.gateway_port}"
    getattr(c, spawner_cls).review_url = f"http://{ip}:{s.review_port}" if s.review_command else ""
    getattr(c, spawner_cls).privacy_url = f"http://{ip}:{s.privacy_port}" if s.privacy_command else ""

    env_common = {"ENCLAVE_DB_URL": s.db_url} if s.db_url else {}
    if s.enclave_home:
        env_common["ENCLAVE_HOME"] = s.enclave_home
    if s.model_dir:
        env_common["ENCLAVE_MODEL_DIR"] = s.model_dir
    warden = [python, "-m", "enclave.hub.warden", f"--interval={s.warden_interval}",
              f"--egress-interval={s.egress_interval}"]
    if s.mode == "docker":
        warden += [f"--network={s.network.name}", f"--bridge={s.network.bridge}"]
    services = [
        {"name": "warden", "command": tether(warden), "environment": env_common},
        {"name": "idle-culler", "command": tether([python, "-m", "jupyterhub_idle_culler",
                                                   f"--timeout={s.idle_timeout}", "--cull-every=300"])},
    ]
    if s.gateway:
        command = shlex.split(s.gateway_command) if s.gateway_command else [
            python, "-m", "enclave.cli", "serve", "gateway", "--host", ip, "--port", str(s.gateway_port)]
        if s.model_dir and "--model" not in command:
            command += ["--model", s.model_dir]
        services.append({"name": "gateway", "url": f"http://{ip}:{s.gateway_port}", "command": tether(command),
                         "environment": env_common, "display": False})
    if s.review_command:
        review_env = dict(env_common)
        if s.model_dir:
            # The review service scores exports in-process with the served model, read-only (no
            # quota: reviewers' checks must not be charged to a scholar's grant), and fingerprints
            # its weights (ENCLAVE_MODEL_DIR).
            review_env.setdefault("ENCLAVE_REVIEW_SCORER_MODEL", s.model_dir)
        services.append({"name": "review", "url": f"http://{ip}:{s.review_port}",
                         "command": tether(shlex.split(s.review_command)), "environment": review_env,
                         "oauth_no_confirm": True})
    if s.privacy_command:
        # Reads the registered datasets (read-only) and writes the privacy ledger in the registry.
        services.append({"name": "privacy", "url": f"http://{ip}:{s.privacy_port}",
                         "command": tether(shlex.split(s.privacy_command)), "environment": env_common,
                         "display": False})
    if s.access_command:
        # Browsers reach it through the proxy, so it listens on loopback: notebooks cannot call it.
        services.append({"name": "access", "url": f"http://127.0.0.1:{s.access_port}",
                         "command": tether(shlex.split(s.access_command)), "environment": env_common,
                         "oauth_no_confirm": True})
        # Newcomers find the registration page from the hub's login page (the login page shows
        # `announcement_login` instead of the general announcement, so developer mode's banner stays).
        register = 'No account yet? <a href="/services/access/register">Register to apply for access</a>.'
        shown = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
        banner = f"{shown['announcement']}<br>" if shown.get("announcement") else ""
        c.JupyterHub.template_vars = {**shown, "announcement_login": banner + register}
    operator_token = s.operator_token
    if operator_token:
        # Operators' tooling (and the end-to-end tests) drive the hub REST API with this token.
        services.append({"name": "enclave-operator", "api_token": operator_token})
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = [
        # Nobody is a hub admin, whatever the hub's database says (an older deployment made
        # operators admins): the admin role renames users and mints tokens as anyone.
        {"name": "admin", "users": [], "services": []},
        # Operators get this instead, from the registry at each login and refresh.
        {**OPERATOR_ROLE, "scopes": list(OPERATOR_ROLE["scopes"])},
        # Scholars (and reviewers, operators) may call the services; a notebook's token gets these
        # only because the user holds them (server_token_scopes takes the intersection).
        {"name": "user", "scopes": ["self", "access:services!service=gateway", "access:services!service=review",
                                    "access:services!service=privacy", "access:services!service=access"]},
        # read:tokens: the warden records every hub token on the registry's audit chain.
        {"name": "enclave-warden", "scopes": ["list:users", "read:users", "read:servers", "read:tokens",
                                              "delete:servers"],
         "services": ["warden"]},
        {"name": "idle-culler", "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
         "services": ["idle-culler"]},
    ]
    if operator_token:
        # No `tokens` (minting tokens as someone else) and no `admin:users` (renaming users, so
        # taking a reviewer's name): this service may see users and start and stop servers, no
        # more. It cannot create users either (only `admin:users` can): people become hub users
        # by logging in.
        c.JupyterHub.load_roles.append({"name": "enclave-operator", "services": ["enclave-operator"], "scopes": [
            "servers", "list:users", "read:users", "read:servers"]})
    return s
