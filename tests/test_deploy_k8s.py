"""The Kubernetes deployment (deploy/k8s/) renders, every object is valid for the Kubernetes
version we target, and it says what the Docker deployment says: pods under the restricted pod
security standard, the gateway on GPUs with two replicas and the model read-only, the registry's
URL only from a Secret, notebooks that reach the hub, the gateway and the review service and
nothing else, and a hub that loads our plug-ins. No cluster is needed: `kubectl kustomize`
renders, `kubernetes-validate` checks against the API's published schemas."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the namespace's pod-security enforce-version says the same
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl is not installed (it renders the kustomization)")


def render(overlay: str) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request) -> list[dict]:
    return render(request.param)


def one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def deep_merge(base: dict, extra: dict) -> dict:
    """What helm does with `-f base -f extra`: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def hub_values(objects: list[dict]) -> dict:
    """The chart's values as helm would get them: the base file, then the overlay's."""
    data = one(objects, "ConfigMap", "jupyterhub-values")["data"]
    values = yaml.safe_load(data["values.yaml"])
    for name in sorted(k for k in data if k != "values.yaml"):
        values = deep_merge(values, yaml.safe_load(data[name]))
    return values


def pod_specs(objects: list[dict]):
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def test_overlays_exist():
    assert {"production", "cpu"} <= set(OVERLAYS)


def test_every_object_is_valid_for_the_targeted_kubernetes(objects):
    import kubernetes_validate

    assert {o["kind"] for o in objects} >= {"Namespace", "Deployment", "Service", "NetworkPolicy",
                                             "PersistentVolumeClaim", "PodDisruptionBudget", "ConfigMap"}
    for o in objects:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"enclave"}


def test_the_namespace_enforces_restricted_pod_security(objects):
    labels = one(objects, "Namespace", "enclave")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "v" + KUBERNETES_VERSION.rsplit(".", 1)[0]


def _restricted(where: str, pod: dict, containers: list[dict]) -> None:
    """The restricted Pod Security Standard, and our own additions (read-only root, no API token)."""
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
    assert pod.get("automountServiceAccountToken") is False, where
    assert not any("hostPath" in v for v in pod.get("volumes", [])), where
    pod_context = pod.get("securityContext", {})
    for c in containers:
        context = c.get("securityContext", {})
        merged = {**pod_context, **context}
        assert merged.get("runAsNonRoot") is True and merged.get("runAsUser", 1) != 0, (where, c["name"])
        assert merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", (where, c["name"])
        assert context.get("allowPrivilegeEscalation") is False, (where, c["name"])
        assert context.get("capabilities", {}).get("drop") == ["ALL"], (where, c["name"])
        assert not context.get("capabilities", {}).get("add"), (where, c["name"])
        assert not context.get("privileged"), (where, c["name"])
        assert context.get("readOnlyRootFilesystem") is True, (where, c["name"])


def test_our_pods_are_locked_down(objects):
    names = []
    for name, pod in pod_specs(objects):
        _restricted(name, pod, pod["containers"] + pod.get("initContainers", []))
        names.append(name)
    assert sorted(names) == ["gateway", "review"]


def test_production_gateway_runs_on_gpus():
    pod = one(render("production"), "Deployment", "gateway")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"][container["command"].index("--device") + 1] == "cuda"


def test_gateway_runs_two_replicas_with_the_model_read_only(objects):
    gateway = one(objects, "Deployment", "gateway")
    assert gateway["spec"]["replicas"] >= 2
    pod = gateway["spec"]["template"]["spec"]
    [container] = pod["containers"]
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model["persistentVolumeClaim"]["readOnly"] is True
    assert next(m for m in container["volumeMounts"] if m["name"] == "model")["readOnly"] is True
    assert one(objects, "PersistentVolumeClaim", "enclave-model")["spec"]["accessModes"] == ["ReadOnlyMany"]
    # Every replica reads one sampling secret, so a seed gives one text whichever answers.
    env = {e["name"]: e for e in container["env"]}
    secret_dir = next(m for m in container["volumeMounts"] if m["name"] == "sampling-secret")["mountPath"]
    assert env["ENCLAVE_GATEWAY_SEED_SECRET_FILE"]["value"].startswith(secret_dir + "/")
    assert one(objects, "PodDisruptionBudget", "gateway")["spec"]["minAvailable"] == 1


def test_the_registry_url_comes_only_from_a_secret(objects):
    for name, pod in pod_specs(objects):
        for c in pod["containers"]:
            url = next(e for e in c["env"] if e["name"] == "ENCLAVE_DB_URL")
            assert "value" not in url and url["valueFrom"]["secretKeyRef"] == {"name": "enclave-db", "key": "url"}, name
    values = hub_values(objects)
    assert values["hub"]["extraEnv"]["ENCLAVE_DB_URL"] == {"valueFrom": {"secretKeyRef": {"name": "enclave-db", "key": "url"}}}
    assert "postgresql://" not in yaml.safe_dump(objects)


def test_production_images_are_pinned_by_digest():
    objects = render("production")
    for name, pod in pod_specs(objects):
        for c in pod["containers"]:
            assert "@sha256:" in c["image"], (name, c["image"])
    values = hub_values(objects)
    for part in ("hub", "singleuser"):
        assert "@sha256:" in values[part]["image"]["tag"], part


def test_network_policies_deny_by_default_and_open_only_the_enclaves_paths(objects):
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name in ("gateway", "review"):
        spec = policies[name]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        sources = [s["podSelector"]["matchLabels"] for rule in spec["ingress"] for s in rule["from"]]
        assert sources == [{"component": "singleuser-server"}, {"component": "hub"}, {"component": "proxy"}], name
        for rule in spec["egress"]:
            assert rule.get("to"), f"{name}: an egress rule without destinations allows every address"
            for target in rule["to"]:
                cidr = target.get("ipBlock", {}).get("cidr", "")
                assert not cidr.startswith("0.0.0.0"), name


def test_notebooks_reach_the_hub_gateway_and_review_only(objects):
    values = hub_values(objects)
    policy = values["singleuser"]["networkPolicy"]
    assert policy["enabled"] is True
    rules = policy["egressAllowRules"]
    assert rules["nonPrivateIPs"] is False
    assert set(rules) >= {"cloudMetadataServer", "dnsPortsCloudMetadataServer", "dnsPortsKubeSystemNamespace",
                          "dnsPortsPrivateIPs", "nonPrivateIPs", "privateIPs"}
    assert not any(rules.values()), rules
    # The chart adds egress to the hub itself; ours adds the gateway's and review's pods, on their
    # ports, matching the labels and ports of our Deployments.
    allowed = {(t["podSelector"]["matchLabels"]["app.kubernetes.io/name"], p["port"])
               for rule in policy["egress"] for t in rule["to"] for p in rule["ports"]}
    deployed = set()
    for name, pod in pod_specs(objects):
        deployment = one(objects, "Deployment", name)
        label = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        deployed |= {(label, port["containerPort"]) for c in pod["containers"] for port in c["ports"]}
    assert allowed == deployed == {("enclave-gateway", 8001), ("enclave-review", 8002)}
    assert policy["ingress"] == []


def test_notebook_pods_get_the_docker_spawners_lock_down(objects):
    values = hub_values(objects)
    single, spawner = values["singleuser"], values["hub"]["config"]["KubeSpawner"]
    pod = single["extraPodConfig"]
    _restricted("singleuser", {**pod, "securityContext": spawner["pod_security_context"],
                               "volumes": single["storage"]["extraVolumes"]},
                [{"name": "notebook", "securityContext": spawner["container_security_context"]}])
    assert single["uid"] == 1000 and single["allowPrivilegeEscalation"] is False
    assert single["cloudMetadata"]["blockWithIptables"] is False  # its init container needs NET_ADMIN
    tmp = next(v for v in single["storage"]["extraVolumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["medium"] == "Memory"
    assert {m["mountPath"] for m in single["storage"]["extraVolumeMounts"]} == {"/tmp"}
    # No name outside the enclave resolves: the only DNS server is an address where nothing answers.
    assert pod["dnsPolicy"] == "None" and pod["dnsConfig"]["nameservers"] == ["192.0.2.1"]


def test_services_in_the_values_are_the_deployed_ones(objects):
    values = hub_values(objects)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for name in ("gateway", "review"):
        [port] = services[name]["spec"]["ports"]
        assert values["hub"]["services"][name]["url"] == f"http://{name}:{port['port']}"
    # The review pod mounts the API token the chart keeps for it in the hub's Secret.
    review = one(objects, "Deployment", "review")["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in review["env"] if e["name"] == "JUPYTERHUB_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hub", "key": "hub.services.review.apiToken"}
    assert values["hub"]["loadRoles"]["admin"] == {"users": [], "services": []}
    assert values["hub"]["config"]["JupyterHub"]["admin_access"] is False


def _extra_config(values: dict):
    from traitlets.config import Config

    c = Config()
    env = {"ENCLAVE_DB_URL": "postgresql://enclave@db/enclave", "ENCLAVE_HOME": "/srv/jupyterhub/enclave"}
    code = "\n".join(values["hub"]["extraConfig"][k] for k in sorted(values["hub"]["extraConfig"]))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        exec(compile(code, "hub.extraConfig", "exec"), {"c": c})  # noqa: S102 - our own config file
    return c


def test_the_hub_loads_our_plug_ins(objects):
    from enclave.hub.authenticator import OPERATOR_ROLE
    from enclave.hub.spawner import SERVER_TOKEN_SCOPES

    values = hub_values(objects)
    authenticator = values["hub"]["config"]["JupyterHub"]["authenticator_class"]
    module, name = authenticator.rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[name]), name).__name__ == "EnclavePasswordAuthenticator"

    c = _extra_config(values)
    assert c.Spawner.server_token_scopes == SERVER_TOKEN_SCOPES
    roles = c.JupyterHub.load_roles.get_value([])
    assert [r["name"] for r in roles] == [OPERATOR_ROLE["name"]] and roles[0]["scopes"] == OPERATOR_ROLE["scopes"]
    [warden] = c.JupyterHub.services.get_value([])
    assert warden["name"] == "warden" and warden["command"][1:3] == ["-m", "enclave.hub.warden"]
    assert warden["environment"]["ENCLAVE_DB_URL"] == "postgresql://enclave@db/enclave"
    # The warden's hub role, from the values, names it.
    assert values["hub"]["loadRoles"]["enclave-warden"]["services"] == ["warden"]


def test_the_named_spawner_exists(objects):
    spawner = hub_values(objects)["hub"]["config"]["JupyterHub"]["spawner_class"]
    module, name = spawner.rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[name]), name).__name__ == "EnclaveKubeSpawner"


def _kube_spawner(values: dict, engine, username: str, datasets_root: Path):
    """Our KubeSpawner configured from the chart's values as the chart's hub config maps them, for
    a hub user `username`, on a real registry. No cluster: the pod and claim are built, not sent."""
    from types import SimpleNamespace

    from enclave.hub.kube_spawner import EnclaveKubeSpawner

    single, traits = values["singleuser"], values["hub"]["config"]["KubeSpawner"]
    spawner = EnclaveKubeSpawner(
        _mock=True, user=SimpleNamespace(name=username, id=1, url=f"/user/{username}/", escaped_name=username),
        enclave_db_url=str(engine.url.render_as_string(hide_password=False)),
        image=f"{single['image']['name']}:{single['image']['tag']}", uid=single["uid"], fs_gid=single["fsGid"],
        container_security_context=traits["container_security_context"],
        pod_security_context=traits["pod_security_context"], extra_pod_config=single["extraPodConfig"],
        volumes=[*single["storage"]["extraVolumes"],
                 {"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}],
        volume_mounts=[*single["storage"]["extraVolumeMounts"],
                       {"name": "volume-{user_server}", "mountPath": single["storage"]["homeMountPath"]}],
        datasets_root=str(datasets_root), gateway_url="http://localhost:8001", review_url="http://127.0.0.1:8002")
    spawner.api_token = "t" * 32
    return spawner


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def test_a_kubernetes_notebook_pod_is_admitted_limited_and_locked_down_by_the_registry(objects, tmp_path,
                                                                                       monkeypatch):
    """The spawner the chart names builds, from the registry's plan, a pod with the grant's limits,
    this project's work claim and datasets read-only, valid for the targeted Kubernetes and inside
    the restricted standard; a scholar without a live project gets no pod at all."""
    import asyncio

    import kubernetes_validate
    from kubernetes_asyncio.client import ApiClient
    from tornado import web

    from enclave.registry import datasets, grants, people
    from enclave.registry.db import make_engine, session_scope, upgrade
    from tests.helpers import OPERATOR, approved_project

    # KubeSpawner loads a client configuration when it is made; this one is never contacted (the
    # pod and claim are built here, not sent), and points at a loopback port where nothing listens.
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Olga Operator", "op@example.org", roles=["operator"],
                          bootstrap=True)
    approved_project(engine, "p1", "alice")
    root = tmp_path / "datasets"
    (root / "people").mkdir(parents=True)
    (root / "people" / "people.csv").write_text("name,zip\nA,12345\n")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p1", cpu=1.5, mem_bytes=3 * 2**30, work_bytes=2**30)
        datasets.register(s, OPERATOR, "people", str(root / "people" / "people.csv"), ["zip"])
        datasets.allow(s, OPERATOR, "people", "p1")
        people.add_person(s, OPERATOR, "bob", "Bob", "bob@example.org", roles=["scholar"])
    values = hub_values(objects)

    async def build(username):
        spawner = _kube_spawner(values, engine, username, root)
        spawner.apply_plan(await spawner.enclave_plan())
        spawner.apply_host_aliases(await spawner.resolve_services())
        pod = await spawner.get_pod_manifest()
        pvc = spawner.get_pvc_manifest()
        async with ApiClient() as api:
            return spawner, api.sanitize_for_serialization(pod), api.sanitize_for_serialization(pvc)

    spawner, pod, pvc = asyncio.run(build("alice"))
    assert pod["kind"] == "Pod" and pvc["kind"] == "PersistentVolumeClaim"
    for manifest in (pod, pvc):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    [container] = pod["spec"]["containers"]
    _restricted("notebook pod", pod["spec"], [container])
    assert container["resources"]["limits"] == {"cpu": 1.5, "memory": 3 * 2**30}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert pod["metadata"]["labels"]["enclave/project"] == "p1"
    assert pod["metadata"]["labels"]["enclave/user"] == "alice"
    assert container["env"] and {e["name"]: e.get("value") for e in container["env"]}["ENCLAVE_PROJECT"] == "p1"
    # This project's work claim, sized by the grant, at ~/work, and the chart's home claim is gone.
    assert pvc["metadata"]["name"] == "enclave-work-alice-p1"
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(2**30)
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"enclave-work": {"claimName": "enclave-work-alice-p1"},
                      "enclave-datasets": {"claimName": "enclave-datasets", "readOnly": True}}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/home/scholar/work"]["name"] == "enclave-work"
    data = mounts["/home/scholar/datasets/people/people.csv"]
    assert data["readOnly"] is True and data["subPath"] == "people/people.csv"
    assert pod["spec"]["dnsPolicy"] == "None" and pod["spec"]["automountServiceAccountToken"] is False
    # The pod resolves nothing, so the services' names are pinned in its /etc/hosts.
    assert {"ip": "127.0.0.1", "hostnames": ["localhost"]} in pod["spec"]["hostAliases"]

    # Bob belongs to no project: the registry refuses before any pod exists.
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(build("bob"))
    assert refused.value.status_code == 403 and "cannot start a notebook" in refused.value.log_message
