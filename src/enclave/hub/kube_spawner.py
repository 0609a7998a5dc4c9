"""The reading room's desk on Kubernetes: KubeSpawner with the registry in charge of every start.

`EnclaveKubeSpawner` shares everything that is not a Docker fact with `EnclaveDockerSpawner`
through `EnclaveContainerMixin` (and its `EnclaveSessionMixin`): the registry admits the start and picks the project
(`enclave.hub.admission.session_plan`: the one place where a grant becomes limits), the session is
recorded and closed, the notebook gets the enclave's service URLs. What differs is how the plan
becomes a pod:

- CPU and memory limits from the grant (requests too, so the scheduler reserves them);
- the scholar's work volume for *this* project is a PersistentVolumeClaim named by the same
  template as the Docker volume (`enclave-work-{username}-{project}`), sized by the grant's
  `work_bytes`; the chart's remembered claim name is ignored, so a scholar's files never follow
  them into another project;
- the project's datasets come read-only from one claim that holds every registered dataset
  (`datasets_claim`, mounted in the hub at `datasets_root` too, where the registry's paths point),
  each by its sub-path;
- labels that name the project and the person, for NetworkPolicies and for operators;
- the hub's, gateway's, review's and privacy service's names pinned in the pod's /etc/hosts
  (`hostAliases`, resolved by the hub at each start), because the pod's only DNS server answers
  nothing.

The lock-down itself (read-only root, no capabilities, uid 1000, tmpfs /tmp, no service-account
token, a DNS server where nothing answers) is the chart's values (deploy/k8s/), validated by
tests/test_deploy_k8s.py against the restricted pod security standard, which the namespace
enforces whoever creates the pod. Browser-egress counters and work-volume sizes are host-firewall
and Docker facts; on Kubernetes the NetworkPolicies cut egress, and metering the browser's share
needs a CNI with per-pod byte counters (not done: docs/operators.md says so).
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from kubespawner import KubeSpawner
from traitlets import Unicode, default

from enclave.hub.admission import SessionPlan
from enclave.hub.spawner import EnclaveContainerMixin

# Kubernetes label values: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric.
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Object names (DNS-1123 subdomain): lowercase alphanumerics and '-', at most 253 characters.
_NAME_OK = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def label_value(text: str) -> str:
    value = _LABEL_UNSAFE.sub("-", text)[:63].strip("-._")
    return value or "none"


class EnclaveKubeSpawner(EnclaveContainerMixin, KubeSpawner):
    datasets_claim = Unicode(
        "enclave-datasets",
        help="""PersistentVolumeClaim (ReadOnlyMany) holding every registered dataset; each project's
        datasets are mounted from it by sub-path, read-only.""",
    ).tag(config=True)
    datasets_root = Unicode(
        "/srv/enclave/datasets",
        help="""Where datasets_claim is mounted in the hub pod; registered dataset paths must lie
        under it (the registry checks that they exist before a start).""",
    ).tag(config=True)

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self):
        return True

    @default("remember_pvc_name")
    def _default_remember_pvc_name(self):
        # The claim depends on the project chosen at each start, never on the last one.
        return False

    @default("image_pull_policy")
    def _default_image_pull_policy(self):
        return "IfNotPresent"

    def _dataset_sub_path(self, plan_path) -> str:
        root = PurePosixPath(self.datasets_root)
        path = PurePosixPath(str(plan_path))
        try:
            return str(path.relative_to(root))
        except ValueError:
            raise ValueError(f"dataset path {path} is not under the datasets claim's mount {root}") from None

    def apply_plan(self, plan: SessionPlan) -> None:
        """Turn the registry's plan into this spawner's pod and claim settings."""
        if not _NAME_OK.match(plan.work_volume) or len(plan.work_volume) > 253:
            raise ValueError(f"work volume {plan.work_volume!r} is not a valid Kubernetes claim name "
                             "(lowercase letters, digits and '-')")
        self.cpu_limit = self.cpu_guarantee = float(plan.cpu)
        self.mem_limit = self.mem_guarantee = int(plan.mem_bytes)
        self.pvc_name = plan.work_volume
        self._pvc_exists = False  # check (and create) the claim of this project's volume
        if plan.work_bytes:
            self.storage_capacity = str(int(plan.work_bytes))
        labels = {"enclave/project": label_value(plan.project), "enclave/user": label_value(plan.username)}
        self.extra_labels = {**self.extra_labels, **labels}
        self.storage_extra_labels = {**self.storage_extra_labels, **labels}

        work = {"name": "enclave-work", "persistentVolumeClaim": {"claimName": plan.work_volume}}
        work_path = self.work_path
        # The chart's own home claim (`{pvc_name}`, at the same path) gives way to ours.
        chart_home = {v.get("name") for v in self.volumes
                      if (v.get("persistentVolumeClaim") or {}).get("claimName") == "{pvc_name}"}
        volumes = [v for v in self.volumes if v.get("name") not in chart_home | {"enclave-work", "enclave-datasets"}]
        mounts = [m for m in self.volume_mounts if m.get("name") not in chart_home
                  and not str(m.get("name", "")).startswith("enclave-") and m.get("mountPath") != work_path]
        volumes.append(work)
        mounts.append({"name": "enclave-work", "mountPath": work_path})
        if plan.datasets:
            volumes.append({"name": "enclave-datasets",
                            "persistentVolumeClaim": {"claimName": self.datasets_claim, "readOnly": True}})
            for mount in plan.datasets:
                mounts.append({"name": "enclave-datasets", "mountPath": self.dataset_target(mount), "readOnly": True,
                               "subPath": self._dataset_sub_path(mount.host_path)})
        self.volumes = volumes
        self.volume_mounts = mounts

    def service_hostnames(self) -> list[str]:
        """The names notebooks reach the enclave's services by (from their URLs), not addresses."""
        names = []
        for url in (self.hub.api_url if self.hub else "", self.gateway_url, self.review_url, self.privacy_url):
            host = urlsplit(url).hostname if url else None
            if not host or host in names:
                continue
            try:
                ipaddress.ip_address(host)
            except ValueError:
                names.append(host)
        return names

    def apply_host_aliases(self, addresses: dict[str, str]) -> None:
        by_ip: dict[str, list[str]] = {}
        for name, ip in addresses.items():
            by_ip.setdefault(ip, []).append(name)
        aliases = [{"ip": ip, "hostnames": sorted(names)} for ip, names in sorted(by_ip.items())]
        self.extra_pod_config = {**self.extra_pod_config, "hostAliases": aliases}

    async def resolve_services(self) -> dict[str, str]:
        """Each service name's address, as the hub sees it (the hub's DNS works; the pod's does not)."""
        def resolve(name: str) -> str:
            try:
                return socket.gethostbyname(name)
            except OSError as exc:
                raise ValueError(f"cannot resolve the service name {name!r} for notebooks: {exc}") from None

        names = self.service_hostnames()
        return dict(zip(names, await asyncio.gather(*(asyncio.to_thread(resolve, n) for n in names))))

    async def _start(self):
        plan = await self.enclave_plan()
        try:
            self.apply_plan(plan)
            self.apply_host_aliases(await self.resolve_services())
        except ValueError as wrong:  # the deployment's settings, not the scholar's choice
            from tornado import web

            self.log.error("enclave: cannot plan %s's pod: %s", self.user.name, wrong)
            raise web.HTTPError(500, f"The enclave is misconfigured: {wrong}") from None
        self.log.info("enclave: starting %s for project %s (cpu %s, mem %s, %d dataset(s))", self.user.name,
                      plan.project, plan.cpu, plan.mem_bytes, len(plan.datasets))
        url = await super()._start()
        try:
            pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") or {}
            await self.record_start(plan, mode="kubernetes", container_id=self.pod_name,
                                    container_ip=(pod.get("status") or {}).get("podIP", ""), image=self.image,
                                    work_volume=plan.work_volume)
        except Exception:
            self.log.exception("enclave: could not record %s's session; stopping the pod", self.user.name)
            await KubeSpawner.stop(self, now=True)
            raise
        return url

    async def stop(self, now=False):
        session_id = self.enclave_session
        await super().stop(now=now)
        self.enclave_session = session_id
        try:
            await self.record_stop()
        finally:
            self.enclave_session = ""


__all__ = ["EnclaveKubeSpawner", "label_value"]
