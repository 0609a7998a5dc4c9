"""The enclave's own hub (our authenticator, spawner, warden and config) in a subprocess, started
the way `enclave serve hub` starts it, plus a scholar's HTTP session against it: log in through
the login form, spawn, talk to the single-user server and its kernels."""
from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from enclave.hub.config import EnclaveHubSettings
from enclave.hub.launch import hub_environment, start_hub, stop_leftovers
from enclave.registry.credentials import set_password
from enclave.registry.db import make_engine, session_scope
from tests.helpers import OPERATOR, free_port, wait_until_serving


@dataclass
class Stack:
    settings: EnclaveHubSettings
    public_url: str
    operator_token: str
    log_path: Path
    db_url: str = ""

    @property
    def api(self) -> str:
        return f"{self.public_url}/hub/api"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"token {self.operator_token}"}, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def user_model(self, name: str) -> dict:
        with self.admin() as c:
            reply = c.get(f"/users/{name}")
            reply.raise_for_status()
            return reply.json()

    def ensure_user(self, name: str) -> None:
        """Make `name` a hub user if they are not one yet: no service may create users (that
        scope renames them too), so they log in, as `sign_in` does."""
        with self.admin() as c:
            if c.get(f"/users/{name}").status_code == 200:
                return
        sign_in(self.public_url, self.db_url, name)

    def wait_stopped(self, name: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            servers = self.user_model(name).get("servers") or {}
            if not servers.get(""):
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(f"{name}'s server still running after {timeout} s")


@contextlib.contextmanager
def running_stack(workdir: Path, db_url: str, *, mode: str, image: str | None = None, model_dir: str | None = None,
                  gateway: bool = False, review: bool = False, warden_interval: int = 2, extra_env: dict | None = None,
                  **overrides):
    port = free_port()
    settings = EnclaveHubSettings(
        mode=mode, state_dir=str(workdir / "hub"), public_url=f"http://127.0.0.1:{port}",
        hub_port=free_port(), proxy_api_port=free_port(), gateway_port=free_port(), review_port=free_port(),
        model_dir=model_dir or "", gateway=gateway, warden_interval=warden_interval,
        **overrides,
    )
    if review:
        settings.review_command = shlex.join([sys.executable, "-m", "enclave.cli", "serve", "review", "--host",
                                              settings.service_ip, "--port", str(settings.review_port)])
    operator_token = secrets.token_hex(24)
    env = hub_environment(settings, image, {"ENCLAVE_DB_URL": db_url, "ENCLAVE_HUB_OPERATOR_TOKEN": operator_token,
                                            **(extra_env or {})})
    log_path = workdir / "hub.log"
    hub = start_hub(env, Path(settings.state_dir), log_path)
    stack = Stack(settings, settings.public_url, operator_token, log_path, db_url)
    try:
        wait_until_serving(f"{stack.api}/", hub, log_path, "the hub", timeout=90)
        yield stack
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=30)
        except Exception:
            hub.kill()
        stop_leftovers(Path(settings.state_dir))  # the proxy, and any service still stopping


class Browser:
    """A scholar's browser, as far as HTTP goes: cookies, the hub's XSRF token, redirects."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.client = httpx.Client(base_url=stack.public_url, follow_redirects=True, timeout=120)

    def close(self):
        self.client.close()

    def _xsrf(self) -> str:
        return self.client.cookies.get("_xsrf", path="/hub/") or self.client.cookies.get("_xsrf") or ""

    def login(self, username: str, password: str) -> httpx.Response:
        return form_login(self.client, username, password)

    def logged_in(self) -> bool:
        reply = self.client.get("/hub/home", follow_redirects=False)
        return reply.status_code == 200

    def hub_api(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"X-XSRFToken": self._xsrf(), **kw.pop("headers", {})}
        return self.client.request(method, f"/hub/api{path}", headers=headers, **kw)


def form_login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """Log in through the hub's login form (302 on success)."""
    page = client.get("/hub/login")
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    xsrf = token.group(1) if token else (client.cookies.get("_xsrf", path="/hub/") or client.cookies.get("_xsrf") or "")
    data = {"username": username, "password": password, "_xsrf": xsrf}
    return client.post("/hub/login?next=", data=data, follow_redirects=False)


def sign_in(public_url: str, db_url: str, name: str) -> None:
    """Make registry person `name` a hub user the way people become one: an operator (OPERATOR)
    sets them a password and they log in through the form. The password is a fresh one: use this
    for people whose own password the test does not need."""
    password = secrets.token_urlsafe(18)
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as s:
            set_password(s, OPERATOR, name, password)
    finally:
        engine.dispose()
    with httpx.Client(base_url=public_url, timeout=60) as client:
        reply = form_login(client, name, password)
        assert reply.status_code == 302, f"{name} could not log in: {reply.status_code} {reply.text[:500]}"


def spawn(stack: Stack, name: str, timeout: float = 180, options: dict | None = None) -> dict:
    """Start `name`'s server through the REST API (as the hub's spawn page does) and wait until it
    is ready or failed; returns the progress event that ended the wait."""
    with stack.admin() as c:
        stack.ensure_user(name)
        reply = c.post(f"/users/{name}/server", json={"user_options": options} if options else None)
        if reply.status_code >= 400:
            return {"failed": True, "status": reply.status_code, "message": reply.text}
    return progress(stack, name, timeout)


def progress(stack: Stack, name: str, timeout: float = 180) -> dict:
    """Follow a pending spawn's progress events until it is ready or failed."""
    deadline = time.time() + timeout
    with stack.admin() as c, c.stream("GET", f"/users/{name}/server/progress", timeout=timeout) as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("ready") or event.get("failed"):
                    return event
            if time.time() > deadline:
                break
    raise AssertionError(f"spawn of {name} did not finish in {timeout} s")
