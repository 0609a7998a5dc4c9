"""The reading room's desk: one locked-down container per scholar session.

`EnclaveDockerSpawner` is DockerSpawner with the registry in charge of every start (approved,
unexpired project with a grant) and with a container that can hold nothing it should not:
read-only root, tmpfs /tmp, no capabilities, no privilege gain, a non-root user, pids/memory/CPU
limits from the grant, the project's datasets mounted read-only, the scholar's work volume for that
project (never another project's), an internal network shared only with the hub, gateway and
review, and a DNS server that answers nothing (so names outside the enclave do not resolve even on
Docker versions whose embedded resolver forwards queries out of internal networks, CVE-2024-29018).

Every session is on the record (`enclave.registry.sessions`): the spawner writes it when the
container starts (image, mounts, limits, the container's address, a digest of its hub token, by
which the gateway and review bind its requests to its project) and closes it at the stop. Before
the server answers anyone, a byte counter for the container goes into the host firewall
(`enclave.hub.egress`), so everything it sends towards browsers is metered."""
from __future__ import annotations

import asyncio
import hashlib
import html
import inspect

from dockerspawner import DockerSpawner
from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from traitlets import Integer, List, Unicode, default

from enclave.hub import egress
from enclave.hub.admission import SessionPlan, live_projects, session_plan
from enclave.hub.network import EnclaveNetwork
from enclave.hub.registry_link import RegistryLink
from enclave.errors import AccessDenied, BadInput
from enclave.registry import sessions
from enclave.registry.models import NotebookSession

# Scopes a notebook's $JUPYTERHUB_API_TOKEN carries: post activity, reach its own server, and call
# the gateway, the review service and the privacy service. Nothing that reads other users or
# administers the hub.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=gateway",
    "access:services!service=review",
    "access:services!service=privacy",
]


class EnclaveSessionMixin(RegistryLink):
    """What every enclave spawner does, Docker or not: ask the registry, pick the project, pass
    the enclave's service URLs."""

    gateway_url = Unicode(
        "", help="URL of the model gateway as seen from inside a notebook (ENCLAVE_GATEWAY_URL)."
    ).tag(config=True)
    review_url = Unicode(
        "", help="URL of the review service as seen from inside a notebook (ENCLAVE_REVIEW_URL)."
    ).tag(config=True)
    privacy_url = Unicode(
        "", help="URL of the privacy service as seen from inside a notebook (ENCLAVE_PRIVACY_URL)."
    ).tag(config=True)

    plan: SessionPlan | None = None
    # The registry's record of the running session (kept in the spawner's state, so a restarted
    # hub still closes the right one).
    enclave_session: str = ""

    @default("server_token_scopes")
    def _default_server_token_scopes(self):
        return list(SERVER_TOKEN_SCOPES)

    @default("options_form")
    def _default_options_form(self):
        return self.options_form_for_user

    @default("options_from_form")
    def _default_options_from_form(self):
        return self.options_from_form

    def get_env(self):
        env = super().get_env()
        env.update(self.enclave_env())
        return env

    async def _projects(self) -> list[str]:
        return await self.in_registry(lambda s: live_projects(s, self.user.name))

    async def options_form_for_user(self, spawner) -> str:
        projects = await self._projects()
        if len(projects) <= 1:
            return ""  # nothing to choose: the spawn goes straight ahead
        choices = "".join(f'<option value="{html.escape(p)}">{html.escape(p)}</option>' for p in projects)
        return f'<label for="project">Project</label><select class="form-control" name="project" id="project">{choices}</select>'

    def options_from_form(self, formdata):
        project = (formdata.get("project") or [""])[0]
        return {"project": project} if project else {}

    def get_state(self):
        state = super().get_state()
        if self.enclave_session:
            state["enclave_session"] = self.enclave_session
        return state

    def load_state(self, state):
        super().load_state(state)
        self.enclave_session = state.get("enclave_session", "")

    def clear_state(self):
        super().clear_state()
        self.enclave_session = ""

    def token_digest(self) -> str:
        return hashlib.sha256(self.api_token.encode()).hexdigest() if self.api_token else ""

    async def record_start(self, plan: SessionPlan, **facts) -> str:
        """Open the session's registry record; returns its id."""
        record = await self.in_registry(lambda s: sessions.open_session(
            s, username=self.user.name, project=plan.project, server_name=self.name or "",
            token_sha256=self.token_digest(), spec=plan.spec(), **facts).id)
        self.enclave_session = record
        return record

    async def record_stop(self, reason: str = "") -> None:
        session_id = self.enclave_session
        if session_id:
            await self.in_registry(lambda s: sessions.close_session(s, session_id, reason or STOPPED_BY_HUB))

    async def settle_egress(self, session_id: str) -> None:
        """Take the session's last egress reading and remove its counter (Docker mode only)."""

    def run_post_stop_hook(self):
        # JupyterHub skips stop() when the server is already gone (a container that died, a hub
        # that was down or stopped hard), then clears the state: close the record here, which it
        # always runs first.
        done = super().run_post_stop_hook()
        session_id = self.enclave_session
        if not session_id:
            return done

        async def close():
            try:
                if inspect.isawaitable(done):
                    await done
                await self.settle_egress(session_id)
                await self.record_stop("the server was already gone when the hub stopped it")
            finally:
                self.enclave_session = ""

        return close()

    async def enclave_plan(self) -> SessionPlan:
        # A scholar chooses the project and nothing else: not the image, not the limits.
        unknown = sorted(set(self.user_options or {}) - {"project"})
        if unknown:
            raise web.HTTPError(400, f"Only the project can be chosen when starting a notebook, not {', '.join(unknown)}")
        project = (self.user_options or {}).get("project") or None
        try:
            plan = await self.in_registry(lambda s: session_plan(s, self.user.name, project, self.volume_template()))
        except AccessDenied as denied:
            self.log.warning("enclave: refused spawn for %s: %s", self.user.name, denied)
            raise web.HTTPError(403, f"You cannot start a notebook: {denied}") from None
        except BadInput as wrong:  # the hub's own settings (e.g. the volume template)
            self.log.error("enclave: cannot plan %s's session: %s", self.user.name, wrong)
            raise web.HTTPError(500, f"The enclave is misconfigured: {wrong}") from None
        # Remember which project this server works for; the warden reads it through the REST API.
        options = {**(self.user_options or {}), "project": plan.project}
        self.user_options = options
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = options
            self.db.commit()
        self.plan = plan
        return plan

    def volume_template(self) -> str:
        return ""  # no work volume of ours (developer mode)

    def enclave_env(self) -> dict[str, str]:
        env = {}
        if self.gateway_url:
            env["ENCLAVE_GATEWAY_URL"] = self.gateway_url
        if self.review_url:
            env["ENCLAVE_REVIEW_URL"] = self.review_url
        if self.privacy_url:
            env["ENCLAVE_PRIVACY_URL"] = self.privacy_url
        if self.plan is not None:
            env["ENCLAVE_PROJECT"] = self.plan.project
        return env


class EnclaveContainerMixin(EnclaveSessionMixin):
    """The notebook's layout inside its container, the same under Docker and Kubernetes: a
    read-only home, the scholar's work volume for this project at home/work, the project's
    datasets read-only under home/datasets."""

    home_dir = Unicode("/home/scholar", help="The scholar's home inside the image (read-only but for work/).").tag(config=True)
    work_dir_name = Unicode("work", help="Writable per-user volume, mounted at home_dir/work_dir_name.").tag(config=True)
    datasets_dir_name = Unicode(
        "datasets", help="Where the project's datasets are mounted read-only, under home_dir."
    ).tag(config=True)
    work_volume_template = Unicode(
        "enclave-work-{username}-{project}",
        help="""Name of a scholar's work volume for one project (a Docker volume, or a Kubernetes
        PersistentVolumeClaim; {username} and {project} expand; both are required, so that copies
        never follow a scholar into another project).""",
    ).tag(config=True)

    def volume_template(self) -> str:
        return self.work_volume_template

    @property
    def work_path(self) -> str:
        return f"{self.home_dir}/{self.work_dir_name}"

    def dataset_target(self, mount) -> str:
        """Where a dataset appears: a folder as home/datasets/NAME, a file inside that folder."""
        target = f"{self.home_dir}/{self.datasets_dir_name}/{mount.name}"
        return target if mount.is_dir else f"{target}/{mount.host_path.name}"


class EnclaveDockerSpawner(EnclaveContainerMixin, DockerSpawner):
    bridge = Unicode(
        "", help="""Linux bridge of the enclave network, whose firewall chains count each container's
        browser egress (empty: no metering, for tests of the spawner alone).""",
    ).tag(config=True)
    pids_limit = Integer(512, help="Most processes/threads a notebook container may have.").tag(config=True)
    tmp_size = Unicode("1g", help="Size of the tmpfs mounted at /tmp.").tag(config=True)
    container_user = Unicode("1000:1000", help="uid:gid the notebook runs as (never root).").tag(config=True)
    dns_servers = List(
        Unicode(),
        help="""DNS servers given to notebook containers. Set to an address on the enclave network
        where nothing answers, so that no name outside the enclave resolves (the hub and services
        are reached by IP).""",
    ).tag(config=True)

    @default("remove")
    def _default_remove(self):
        # An old container would come back with its old config and old API token.
        return True

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"  # no registry is reachable; the image is built locally and pinned by ID

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return self.home_dir

    @default("default_url")
    def _default_default_url(self):
        return f"/lab/tree/{self.work_dir_name}"

    def _host_config(self) -> dict:
        config = {
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmp_size}"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
            "privileged": False,
        }
        if self.dns_servers:
            config["dns"] = list(self.dns_servers)
            config["dns_opt"] = ["timeout:1", "attempts:1"]
        return config

    @property
    def enclave_network(self) -> EnclaveNetwork | None:
        return EnclaveNetwork(self.network_name, self.bridge) if self.bridge else None

    def _volumes(self, plan: SessionPlan) -> dict:
        volumes: dict = {plan.work_volume: {"bind": self.work_path, "mode": "rw"}}
        for mount in plan.datasets:
            volumes[str(mount.host_path)] = {"bind": self.dataset_target(mount), "mode": "ro"}
        return volumes

    async def start(self):
        plan = await self.enclave_plan()
        self.mem_limit = int(plan.mem_bytes)
        self.cpu_limit = float(plan.cpu)
        self.volumes = self._volumes(plan)
        self.extra_host_config = {**(self.extra_host_config if isinstance(self.extra_host_config, dict) else {}),
                                  **self._host_config()}
        self.extra_create_kwargs = {**(self.extra_create_kwargs if isinstance(self.extra_create_kwargs, dict) else {}),
                                    "user": self.container_user,
                                    "labels": {"enclave.project": plan.project, "enclave.user": self.user.name}}
        self.log.info("enclave: starting %s for project %s (cpu %s, mem %s, %d dataset(s))", self.user.name,
                      plan.project, plan.cpu, plan.mem_bytes, len(plan.datasets))
        ip, port = await super().start()
        try:
            session_id = await self.record_start(plan, mode="docker", container_id=self.object_id,
                                                 container_ip=ip, image=self.image, work_volume=plan.work_volume)
            net = self.enclave_network
            if net is not None:
                await asyncio.to_thread(egress.start_counting, net, session_id, ip)
        except Exception:
            # No session runs off the record or unmetered: take the container down again.
            self.log.exception("enclave: could not record or meter %s's session; stopping it", self.user.name)
            session_id = self.enclave_session
            await self._stop_container()  # clears the state
            self.enclave_session = session_id
            try:
                await self.record_stop("failed to start: could not be recorded or metered")
            finally:
                self.enclave_session = ""
            raise
        return ip, port

    async def settle_egress(self, session_id: str) -> None:
        net = self.enclave_network
        if net is None:
            return

        def settle(s):
            record = s.get(NotebookSession, session_id)
            if record is None:
                return
            counters = egress.read_counters(net)
            if session_id in counters:
                sessions.record_egress(s, record, counters[session_id])
            if record.container_ip:
                egress.stop_counting(net, session_id, record.container_ip)

        try:
            await self.in_registry(settle)
        except Exception:  # the stop itself must go ahead; the warden settles what is left
            self.log.exception("enclave: could not settle the egress of session %s", session_id)

    async def _stop_container(self) -> None:
        await DockerSpawner.stop(self)

    async def stop(self, now=False):
        """Stop the container, then take the final reading of its byte counter and close the
        session's record (the counter outlives the container, the record outlives both)."""
        session_id = self.enclave_session
        await self._stop_container()
        if session_id:
            await self.settle_egress(session_id)
        self.enclave_session = session_id
        try:
            await self.record_stop()
        finally:
            self.enclave_session = ""


class EnclaveLocalSpawner(EnclaveSessionMixin, LocalProcessSpawner):
    """Developer mode (`enclave up --unisolated`): the registry still decides who may start, but the
    notebook is a local process with none of the container's isolation. Never for real data."""

    async def start(self):
        plan = await self.enclave_plan()
        started = await super().start()
        await self.record_start(plan, mode="unisolated")
        return started

    async def stop(self, now=False):
        session_id = self.enclave_session
        await super().stop(now=now)
        self.enclave_session = session_id  # the stop cleared the state
        try:
            await self.record_stop()
        finally:
            self.enclave_session = ""

    def user_env(self, env):
        # Run as the hub's own user: developer mode has no per-user Unix accounts.
        return env

    def make_preexec_fn(self, name):
        return None


STOPPED_BY_HUB = "stopped by the hub (the scholar, the idle culler or a hub shutdown)"

__all__ = ["EnclaveContainerMixin", "EnclaveDockerSpawner", "EnclaveLocalSpawner", "SERVER_TOKEN_SCOPES"]
