"""The reading room's desk: one locked-down container per scholar session.

`EnclaveDockerSpawner` is DockerSpawner with the registry in charge of every start (approved,
unexpired project with a grant) and with a container that can hold nothing it should not:
read-only root, tmpfs /tmp, no capabilities, no privilege gain, a non-root user, pids/memory/CPU
limits from the grant, the project's datasets mounted read-only, its own work volume, an internal
network shared only with the hub, gateway and review, and a DNS server that answers nothing (so
names outside the enclave do not resolve even on Docker versions whose embedded resolver forwards
queries out of internal networks, CVE-2024-29018)."""
from __future__ import annotations

import html

from dockerspawner import DockerSpawner
from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from traitlets import Integer, List, Unicode, default

from enclave.hub.admission import SessionPlan, live_projects, session_plan
from enclave.hub.registry_link import RegistryLink
from enclave.errors import AccessDenied

# Scopes a notebook's $JUPYTERHUB_API_TOKEN carries: post activity, reach its own server, and call
# the gateway and the review service. Nothing that reads other users or administers the hub.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=gateway",
    "access:services!service=review",
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

    plan: SessionPlan | None = None

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

    async def enclave_plan(self) -> SessionPlan:
        # A scholar chooses the project and nothing else: not the image, not the limits.
        unknown = sorted(set(self.user_options or {}) - {"project"})
        if unknown:
            raise web.HTTPError(400, f"Only the project can be chosen when starting a notebook, not {', '.join(unknown)}")
        project = (self.user_options or {}).get("project") or None
        try:
            plan = await self.in_registry(lambda s: session_plan(s, self.user.name, project))
        except AccessDenied as denied:
            self.log.warning("enclave: refused spawn for %s: %s", self.user.name, denied)
            raise web.HTTPError(403, f"You cannot start a notebook: {denied}") from None
        # Remember which project this server works for; the warden reads it through the REST API.
        options = {**(self.user_options or {}), "project": plan.project}
        self.user_options = options
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = options
            self.db.commit()
        self.plan = plan
        return plan

    def enclave_env(self) -> dict[str, str]:
        env = {}
        if self.gateway_url:
            env["ENCLAVE_GATEWAY_URL"] = self.gateway_url
        if self.review_url:
            env["ENCLAVE_REVIEW_URL"] = self.review_url
        if self.plan is not None:
            env["ENCLAVE_PROJECT"] = self.plan.project
        return env


class EnclaveDockerSpawner(EnclaveSessionMixin, DockerSpawner):
    home_dir = Unicode("/home/scholar", help="The scholar's home inside the image (read-only but for work/).").tag(config=True)
    work_dir_name = Unicode("work", help="Writable per-user volume, mounted at home_dir/work_dir_name.").tag(config=True)
    datasets_dir_name = Unicode(
        "datasets", help="Where the project's datasets are mounted read-only, under home_dir."
    ).tag(config=True)
    work_volume_template = Unicode(
        "enclave-work-{username}", help="Docker volume name for a user's work directory ({username} expands)."
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

    def _volumes(self, plan: SessionPlan) -> dict:
        volumes: dict = {
            self.work_volume_template.format(username=self.escaped_name): {
                "bind": f"{self.home_dir}/{self.work_dir_name}", "mode": "rw"},
        }
        for mount in plan.datasets:
            target = f"{self.home_dir}/{self.datasets_dir_name}/{mount.name}"
            if not mount.is_dir:
                target = f"{target}/{mount.host_path.name}"
            volumes[str(mount.host_path)] = {"bind": target, "mode": "ro"}
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
        return await super().start()


class EnclaveLocalSpawner(EnclaveSessionMixin, LocalProcessSpawner):
    """Developer mode (`enclave up --unisolated`): the registry still decides who may start, but the
    notebook is a local process with none of the container's isolation. Never for real data."""

    async def start(self):
        await self.enclave_plan()
        return await super().start()

    def user_env(self, env):
        # Run as the hub's own user: developer mode has no per-user Unix accounts.
        return env

    def make_preexec_fn(self, name):
        return None


__all__ = ["EnclaveDockerSpawner", "EnclaveLocalSpawner", "SERVER_TOKEN_SCOPES"]
