"""The warden: a JupyterHub service that stops notebook servers the registry no longer allows.

Every `interval` seconds it lists running servers through the hub API and, for each, asks the
registry whether the person may still work for the server's project. A revoked, suspended or
expired project, a removed membership, or a session older than the grant's `session_hours`
stops the server (and records why in the audit chain). Idle servers are jupyterhub-idle-culler's
job; this one enforces policy.

Runs as a hub-managed service (`python -m enclave.hub.warden`), so it gets JUPYTERHUB_API_URL and
JUPYTERHUB_API_TOKEN from the hub; its role needs list:users, read:servers, delete:servers."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from dataclasses import dataclass

import httpx

from enclave.registry import audit
from enclave.registry.access import resolve
from enclave.registry.clock import utcnow
from enclave.envsettings import database_url, env_str
from enclave.registry.db import make_engine, session_scope
from enclave.errors import AccessDenied

log = logging.getLogger("enclave.warden")
ACTOR = "system"


@dataclass(frozen=True)
class RunningServer:
    user: str
    name: str  # "" for the default server
    project: str | None
    started: dt.datetime | None


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def running_servers(hub: httpx.Client) -> list[RunningServer]:
    servers, offset = [], 0
    while True:
        reply = hub.get("/users", params={"state": "active", "offset": offset, "limit": 200},
                        headers={"Accept": "application/jupyterhub-pagination+json"})
        reply.raise_for_status()
        body = reply.json()
        items = body["items"] if isinstance(body, dict) else body
        for user in items:
            for name, server in (user.get("servers") or {}).items():
                if server.get("stopped") or not (server.get("ready") or server.get("pending") == "spawn"):
                    continue
                options = server.get("user_options") or {}
                servers.append(RunningServer(user["name"], name, options.get("project"), _parse_time(server.get("started"))))
        if not isinstance(body, dict) or not body.get("_pagination", {}).get("next"):
            return servers
        offset = body["_pagination"]["next"]["offset"]


def verdict(session, server: RunningServer, now: dt.datetime) -> str | None:
    """Why `server` must stop, or None while it may run."""
    try:
        access = resolve(session, server.user, server.project, now)
    except AccessDenied as denied:
        return f"{denied.reason}: {denied}"
    if server.started is not None and server.started + dt.timedelta(hours=access.grant.session_hours) <= now:
        return f"session_lifetime: the grant allows {access.grant.session_hours:g} h per session"
    return None


def stop(hub: httpx.Client, server: RunningServer) -> None:
    path = f"/users/{server.user}/server" if not server.name else f"/users/{server.user}/servers/{server.name}"
    reply = hub.delete(path)
    if reply.status_code not in (202, 204, 400, 404):  # 400: already stopping; 404: already gone
        reply.raise_for_status()


def sweep(hub: httpx.Client, engine) -> list[tuple[RunningServer, str]]:
    stopped = []
    now = utcnow()
    for server in running_servers(hub):
        with session_scope(engine) as session:
            why = verdict(session, server, now)
            if why is None:
                continue
            log.warning("stopping %s's server (project %s): %s", server.user, server.project, why)
            stop(hub, server)
            audit.append(session, actor=ACTOR, action="session.stopped", subject=f"person:{server.user}",
                         details={"project": server.project, "server": server.name, "reason": why})
        stopped.append((server, why))
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave-warden", description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between sweeps (default 15)")
    parser.add_argument("--once", action="store_true", help="sweep once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[warden %(asctime)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hub_pid = os.getppid()
    # The warden's settings, read once: the hub passes its API to the services it manages.
    api_url, token = env_str("JUPYTERHUB_API_URL"), env_str("JUPYTERHUB_API_TOKEN")
    if not api_url or not token:
        print("enclave-warden: JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN must be set (run it as a hub service)", file=sys.stderr)
        return 2
    engine = make_engine(database_url())
    try:
        return _run(api_url, token, engine, args, hub_pid)
    except KeyboardInterrupt:  # the hub stopping its services (SIGINT): a normal end
        return 0


def _run(api_url: str, token: str, engine, args, hub_pid: int) -> int:
    with httpx.Client(base_url=api_url.rstrip("/"), headers={"Authorization": f"token {token}"}, timeout=30) as hub:
        while True:
            try:
                sweep(hub, engine)
            except (httpx.HTTPError, OSError) as exc:  # the hub restarting: try again next round
                log.warning("sweep failed: %s", exc)
            if args.once:
                return 0
            if os.getppid() != hub_pid:  # the hub died without stopping us: do not linger
                log.warning("the hub is gone; exiting")
                return 0
            time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
