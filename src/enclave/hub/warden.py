"""The warden: a JupyterHub service that keeps running notebooks within what the registry allows,
and keeps the record of them complete.

Every `interval` seconds it lists running servers through the hub API and, for each, asks the
registry whether the person may still work there: a revoked, suspended or expired project, a
removed membership, a dataset withdrawn from the project or a work volume put on hold, a session
older than the grant's `session_hours`, or a work volume over the grant's `work_bytes` stops the
server (and records why). In the same sweep it records hub tokens created since the last one,
collects the lock-down extension's read log from each container into the registry, measures work
volumes, and closes the registry records of sessions whose servers are gone (a hub that died).

Every `egress_interval` seconds (a few) it reads the host firewall's per-session byte counters
(`enclave.hub.egress`) and charges them to the registry; when a project's browser budget for the
day is spent, its sessions' egress is dropped at once and their servers are stopped.

Runs as a hub-managed service (`python -m enclave.hub.warden`), so it gets JUPYTERHUB_API_URL and
JUPYTERHUB_API_TOKEN from the hub; its role needs list:users, read:servers, read:tokens and
delete:servers. Idle servers are jupyterhub-idle-culler's job."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field

import httpx
from sqlmodel import select

from enclave.hub import egress
from enclave.hub.network import EnclaveNetwork, FirewallError
from enclave.registry import audit, sessions, volumes
from enclave.registry.access import resolve
from enclave.registry.clock import utcnow
from enclave.registry.datasets import datasets_for
from enclave.envsettings import database_url, env_str
from enclave.registry.db import make_engine, session_scope
from enclave.errors import AccessDenied
from enclave.registry.models import AuditEvent, Grant, NotebookSession, Person, Project, WorkVolume, WorkVolumeState
from enclave.registry.sizes import human_size

log = logging.getLogger("enclave.warden")
ACTOR = "system"
# The lock-down extension's structured lines (enclave_lockdown.audit_log): `event {json}`.
LOCKDOWN_EVENTS = ("contents_read", "kernel_output_capped", "route_refused", "response_capped")
_LOCKDOWN_LINE = re.compile(r"^(\S+) .*?\b(" + "|".join(LOCKDOWN_EVENTS) + r") (\{.*\})\s*$")
# At most this many read-log entries per session and sweep go into one audit event (the rest are
# counted): a kernel printing fake lines must not flood the chain.
MAX_LOG_ENTRIES = 200


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


def _users(hub: httpx.Client, state: str | None) -> list[dict]:
    users, offset = [], 0
    while True:
        params = {"offset": offset, "limit": 200, **({"state": state} if state else {})}
        reply = hub.get("/users", params=params, headers={"Accept": "application/jupyterhub-pagination+json"})
        reply.raise_for_status()
        body = reply.json()
        users += body["items"] if isinstance(body, dict) else body
        if not isinstance(body, dict) or not body.get("_pagination", {}).get("next"):
            return users
        offset = body["_pagination"]["next"]["offset"]


def running_servers(hub: httpx.Client) -> list[RunningServer]:
    servers = []
    for user in _users(hub, "active"):
        for name, server in (user.get("servers") or {}).items():
            if server.get("stopped") or not (server.get("ready") or server.get("pending") == "spawn"):
                continue
            options = server.get("user_options") or {}
            servers.append(RunningServer(user["name"], name, options.get("project"), _parse_time(server.get("started"))))
    return servers


def verdict(session, server: RunningServer, now: dt.datetime, volume_sizes: dict[str, int] | None = None) -> str | None:
    """Why `server` must stop, or None while it may run."""
    try:
        access = resolve(session, server.user, server.project, now)
    except AccessDenied as denied:
        return f"{denied.reason}: {denied}"
    grant = access.grant
    if server.started is not None and server.started + dt.timedelta(hours=grant.session_hours) <= now:
        return f"session_lifetime: the grant allows {grant.session_hours:g} h per session"
    record = sessions.live_session_of(session, server.user, server.name)
    if record is None:
        return None
    mounted = {m["dataset"] for m in json.loads(record.spec or "{}").get("mounts", [])}
    withdrawn = sorted(mounted - {d.name for d in datasets_for(session, access.project)})
    if withdrawn:
        return f"dataset_withdrawn: the project may no longer use {', '.join(withdrawn)}"
    volume = session.get(WorkVolume, record.work_volume) if record.work_volume else None
    if volume is not None and volume.state != WorkVolumeState.open:
        return f"volume_held: the work volume is {volume.state} ({volume.state_reason})"
    size = (volume_sizes or {}).get(record.work_volume)
    if size is not None and size > grant.work_bytes:
        return (f"work_volume_full: the work volume holds {human_size(size)}, over the grant's "
                f"{human_size(grant.work_bytes)}; ask an operator to raise the limit or to prune it")
    spent = sessions.view_budget_refusal(session, access.project, grant, now)
    if spent:
        return f"view_budget: {spent}"
    return None


def stop(hub: httpx.Client, user: str, name: str) -> None:
    path = f"/users/{user}/server" if not name else f"/users/{user}/servers/{name}"
    reply = hub.delete(path)
    if reply.status_code not in (202, 204, 400, 404):  # 400: already stopping; 404: already gone
        reply.raise_for_status()


@dataclass
class Warden:
    hub: httpx.Client
    engine: object
    net: EnclaveNetwork | None = None  # None: no egress metering (developer mode)
    docker: object = None  # a docker client (Docker mode), for logs and volume sizes
    _known_tokens: set[str] | None = field(default=None, init=False)

    # --- the policy sweep ----------------------------------------------------------------------

    def sweep(self) -> list[tuple[RunningServer, str]]:
        stopped = []
        now = utcnow()
        running = running_servers(self.hub)
        sizes = self.measure_volumes()
        for server in running:
            with session_scope(self.engine) as session:
                why = verdict(session, server, now, sizes)
            if why is None:
                continue
            self._stop(server.user, server.name, server.project, why)
            stopped.append((server, why))
        self.close_vanished(running)
        self.collect_logs()
        self.record_tokens()
        return stopped

    def _stop(self, user: str, name: str, project: str | None, why: str) -> None:
        """Record why, ask the hub to stop the server, record the request. No transaction is open
        while the hub stops it: the spawner records the stop in a transaction of its own."""
        log.warning("stopping %s's server (project %s): %s", user, project, why)
        with session_scope(self.engine) as session:
            record = sessions.live_session_of(session, user, name)
            session_id = record.id if record is not None else None
            if session_id:
                sessions.set_stop_reason(session, session_id, why)
        stop(self.hub, user, name)
        with session_scope(self.engine) as session:
            audit.append(session, actor=ACTOR, action="session.stop_requested", subject=f"person:{user}",
                         details={"project": project, "server": name, "reason": why, "session": session_id})

    def close_vanished(self, running: list[RunningServer]) -> None:
        """Close the records of sessions the hub no longer runs (it died, or lost the container)."""
        alive = {(s.user, s.name) for s in running}
        with session_scope(self.engine) as session:
            for record in sessions.live_sessions(session):
                person = session.get(Person, record.person_id)
                if (person.username, record.server_name) in alive:
                    continue
                if (utcnow() - record.started_at).total_seconds() < 60:
                    continue  # just recorded: the hub may not list it as running yet
                self.settle_egress(session, record)
                sessions.close_session(session, record.id, "the server is no longer running (found by the warden)")

    # --- browser egress --------------------------------------------------------------------------

    def meter(self) -> list[str]:
        """Charge every live session's byte counter; stop the sessions of projects whose budget is
        spent. Returns the ids of sessions stopped."""
        if self.net is None:
            return []
        counters = egress.read_counters(self.net)
        over: list[tuple[str, str, str, str, str, str]] = []
        with session_scope(self.engine) as session:
            for record in sessions.live_sessions(session):
                if record.mode != "docker" or not record.container_ip:
                    continue
                if record.id not in counters:
                    # The rule is gone (the firewall was reinstalled): count again from zero.
                    egress.start_counting(self.net, record.id, record.container_ip)
                    sessions.restart_counter(session, record)
                    continue
                sessions.record_egress(session, record, counters[record.id])
            session.flush()
            already = egress.blocked(self.net)
            for record in sessions.live_sessions(session):
                if record.mode != "docker" or record.id in already:
                    continue
                project, grant = session.get(Project, record.project_id), session.get(Grant, record.project_id)
                spent = sessions.view_budget_refusal(session, project, grant) if grant else None
                if not spent:
                    continue
                person = session.get(Person, record.person_id)
                over.append((record.id, record.container_ip, person.username, record.server_name, project.slug,
                             f"view_budget: {spent}"))
        for session_id, address, user, server, project, why in over:
            egress.block(self.net, session_id, address)  # drop the rest at once; the stop takes seconds
            self._stop(user, server, project, why)
        return [o[0] for o in over]

    def settle_egress(self, session, record: NotebookSession) -> None:
        if self.net is None or record.mode != "docker":
            return
        counters = egress.read_counters(self.net)
        if record.id in counters:
            sessions.record_egress(session, record, counters[record.id])
        if record.container_ip:
            egress.stop_counting(self.net, record.id, record.container_ip)

    # --- the rest of the record -------------------------------------------------------------------

    def record_tokens(self) -> None:
        """One `hub.token_created` event per hub token, the first time the warden sees it (tokens
        are made in the hub, which has no hook for it; the warden's role reads them)."""
        with session_scope(self.engine) as session:
            if self._known_tokens is None:
                self._known_tokens = set(session.exec(select(AuditEvent.subject).where(
                    AuditEvent.action == "hub.token_created")).all())
            for user in _users(self.hub, None):
                reply = self.hub.get(f"/users/{user['name']}/tokens")
                if reply.status_code != 200:
                    continue
                for token in reply.json().get("api_tokens", []):
                    subject = f"hub-token:{user['name']}:{token.get('id')}"
                    if subject in self._known_tokens:
                        continue
                    audit.append(session, actor=ACTOR, action="hub.token_created", subject=subject, details={
                        "user": user["name"], "note": token.get("note") or "", "created": token.get("created"),
                        "expires_at": token.get("expires_at"), "scopes": sorted(token.get("scopes") or []),
                        "oauth_client": token.get("oauth_client") or ""})
                    self._known_tokens.add(subject)

    def collect_logs(self) -> None:
        """Move the lock-down extension's read log of each live container into the registry (one
        event per session and sweep), so it survives the container's removal."""
        if self.docker is None:
            return
        with session_scope(self.engine) as session:
            for record in sessions.live_sessions(session):
                if record.mode == "docker" and record.container_id:
                    collect_container_log(session, self.docker, record)

    def measure_volumes(self) -> dict[str, int]:
        if self.docker is None:
            return {}
        sizes = {}
        with session_scope(self.engine) as session:
            for record in sessions.live_sessions(session):
                if not record.work_volume:
                    continue
                size = volume_size(self.docker, record.work_volume)
                if size is not None:
                    sizes[record.work_volume] = size
                    volumes.record_size(session, record.work_volume, size)
        return sizes


def collect_container_log(session, docker_client, record: NotebookSession) -> int:
    """Collect the container's lock-down lines since the record's cursor; returns how many."""
    import docker.errors

    since = _parse_time(record.log_cursor) if record.log_cursor else record.started_at
    try:
        container = docker_client.containers.get(record.container_id)
        raw = container.logs(stdout=True, stderr=True, timestamps=True, since=since)
    except docker.errors.DockerException:
        return 0
    entries, cursor = [], record.log_cursor
    for line in raw.decode("utf-8", "replace").splitlines():
        match = _LOCKDOWN_LINE.match(line)
        stamp = line.split(" ", 1)[0]
        if record.log_cursor and stamp <= record.log_cursor:
            continue  # `since` has whole-second resolution: skip what was collected already
        cursor = max(cursor, stamp)
        if not match:
            continue
        try:
            fields = json.loads(match.group(3))
        except ValueError:
            fields = {"unparsed": match.group(3)[:500]}
        entries.append({"time": stamp, "event": match.group(2), **fields})
    if cursor != record.log_cursor:
        record.log_cursor = cursor
        session.add(record)
    if entries:
        person = session.get(Person, record.person_id)
        project = session.get(Project, record.project_id)
        # Reported by the container itself: a record of what the server logged, not proof.
        audit.append(session, actor=ACTOR, action="session.read_log", subject=f"person:{person.username}", details={
            "session": record.id, "project": project.slug, "count": len(entries),
            "entries": entries[:MAX_LOG_ENTRIES], "omitted": max(0, len(entries) - MAX_LOG_ENTRIES)})
    return len(entries)


def volume_size(docker_client, name: str) -> int | None:
    """Bytes the volume's files take on the host (allocated blocks), or None if it is not there."""
    import docker.errors

    try:
        mountpoint = docker_client.volumes.get(name).attrs.get("Mountpoint")
    except docker.errors.DockerException:
        return None
    if not mountpoint or not os.path.isdir(mountpoint):
        return None
    total = 0
    for root, dirs, files in os.walk(mountpoint):
        for entry in dirs + files:
            try:
                total += os.lstat(os.path.join(root, entry)).st_blocks * 512
            except OSError:
                continue
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave-warden", description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between policy sweeps (default 15)")
    parser.add_argument("--egress-interval", type=float, default=2.0,
                        help="seconds between readings of the browser-egress counters (default 2)")
    parser.add_argument("--network", default="", help="the enclave's Docker network (Docker mode)")
    parser.add_argument("--bridge", default="", help="its bridge, whose firewall counts browser egress (Docker mode)")
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


def _docker_client():
    import docker

    return docker.from_env(timeout=30)


def _run(api_url: str, token: str, engine, args, hub_pid: int) -> int:
    net = EnclaveNetwork(args.network or "enclave-net", args.bridge) if args.bridge else None
    docker_client = _docker_client() if args.bridge else None
    with httpx.Client(base_url=api_url.rstrip("/"), headers={"Authorization": f"token {token}"}, timeout=30) as hub:
        warden = Warden(hub, engine, net, docker_client)
        next_sweep = 0.0  # the first sweep at once: a hub that restarts catches up before anything else
        while True:
            try:
                warden.meter()
            except (FirewallError, OSError) as exc:
                log.warning("egress reading failed: %s", exc)
            if time.monotonic() >= next_sweep:
                try:
                    warden.sweep()
                except (httpx.HTTPError, OSError) as exc:  # the hub restarting: try again next round
                    log.warning("sweep failed: %s", exc)
                next_sweep = time.monotonic() + args.interval
            if args.once:
                return 0
            if os.getppid() != hub_pid:  # the hub died without stopping us: do not linger
                log.warning("the hub is gone; exiting")
                return 0
            time.sleep(min(args.egress_interval if net else args.interval, max(0.1, next_sweep - time.monotonic())))


if __name__ == "__main__":
    sys.exit(main())
