"""A real JupyterHub (with configurable-http-proxy) in a subprocess, for tests of how the
enclave's services trust hub tokens. Users and tokens are made through the hub's REST API with an
admin service token, as an operator's tooling would."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Hub:
    def __init__(self, api_url: str, admin_token: str):
        self.api_url, self.admin_token = api_url, admin_token

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
def running_hub(workdir: Path, services: dict[str, str]):
    """Start JupyterHub with the given services (name -> url); yields a Hub."""
    if shutil.which("configurable-http-proxy") is None:
        raise RuntimeError("configurable-http-proxy is missing (npm install -g configurable-http-proxy; make does)")
    workdir.mkdir(parents=True, exist_ok=True)
    port, hub_port = _free_port(), _free_port()
    admin_token = secrets.token_hex(16)
    config = workdir / "jupyterhub_config.py"
    service_list = [{"name": name, "url": url, "api_token": secrets.token_hex(16)} for name, url in services.items()]
    service_list.append({"name": "test-admin", "api_token": admin_token})
    config.write_text(f"""
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{workdir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{workdir / 'cookie_secret'}"
c.ConfigurableHTTPProxy.pid_file = "{workdir / 'proxy.pid'}"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.services = {json.dumps(service_list)}
c.JupyterHub.load_roles = [
    {{"name": "test-admin", "scopes": ["admin:users", "tokens"], "services": ["test-admin"]}},
    # Scholars may call the gateway: the scope a notebook token needs.
    {{"name": "user", "scopes": ["self", "access:services!service=gateway"]}},
]
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(workdir / "hub.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    api_url = f"http://127.0.0.1:{port}/hub/api"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{api_url}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("JupyterHub did not start:\n" + (workdir / "hub.log").read_text()[-3000:])
            time.sleep(0.25)
        yield Hub(api_url, admin_token)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
