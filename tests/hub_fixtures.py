"""A real JupyterHub (with configurable-http-proxy) in a subprocess, for tests of how the
enclave's services trust hub tokens. Users and tokens are made through the hub's REST API with an
admin service token, as an operator's tooling would."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import free_port, wait_until_serving


class Hub:
    def __init__(self, api_url: str, admin_token: str, url: str = "", service_token: str = ""):
        self.api_url, self.admin_token = api_url, admin_token
        # The public URL (login page, /services/...) and the token of the service under test, when
        # the test needs them.
        self.url, self.service_token = url, service_token

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"token {self.admin_token}"}, timeout=30)

    def add_user(self, name: str) -> None:
        with self.admin() as c:
            reply = c.post(f"/users/{name}")
            assert reply.status_code in (201, 409), reply.text

    def token(self, user: str, scopes: list[str]) -> str:
        with self.admin() as c:
            reply = c.post(f"/users/{user}/tokens", json={"scopes": scopes, "note": "test"})
            assert reply.status_code == 201, reply.text
            return reply.json()["token"]


@contextlib.contextmanager
def hub_process(workdir: Path, *, port: int, hub_port: int, admin_token: str, services: list[dict],
                user_scopes: list[str], authenticator: str):
    """JupyterHub on loopback with `services` (plus a `test-admin` service holding `admin_token`),
    the `user` role holding `user_scopes`, and `authenticator` (config lines); yields its API URL."""
    if shutil.which("configurable-http-proxy") is None:
        raise RuntimeError("configurable-http-proxy is missing (npm install -g configurable-http-proxy; make does)")
    workdir.mkdir(parents=True, exist_ok=True)
    services = [*services, {"name": "test-admin", "api_token": admin_token}]
    config = workdir / "jupyterhub_config.py"
    config.write_text(f"""
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{workdir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{workdir / 'cookie_secret'}"
c.ConfigurableHTTPProxy.pid_file = "{workdir / 'proxy.pid'}"
{authenticator}
c.JupyterHub.services = {services!r}
c.JupyterHub.load_roles = [
    {{"name": "test-admin", "scopes": ["admin:users", "tokens"], "services": ["test-admin"]}},
    {{"name": "user", "scopes": {["self", *user_scopes]!r}}},
]
""")
    log = open(workdir / "hub.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=workdir,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=log, stderr=subprocess.STDOUT)
    api_url = f"http://127.0.0.1:{port}/hub/api"
    try:
        wait_until_serving(f"{api_url}/", proc, workdir / "hub.log", "JupyterHub")
        yield api_url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def running_hub(workdir: Path, services: dict[str, str]):
    """Start JupyterHub with the given services (name -> url); yields a Hub."""
    admin_token = secrets.token_hex(16)
    service_list = [{"name": name, "url": url, "api_token": secrets.token_hex(16)} for name, url in services.items()]
    # Scholars may call the gateway: the scope a notebook token needs.
    with hub_process(workdir, port=free_port(), hub_port=free_port(), admin_token=admin_token, services=service_list,
                     user_scopes=["access:services!service=gateway"],
                     authenticator='c.JupyterHub.authenticator_class = "null"') as api_url:
        yield Hub(api_url, admin_token)
