"""The reading room, end to end, with the real Docker engine: a scholar logs in over HTTP, spawns a
locked-down notebook container from the enclave image, and shows from the inside that the model
is reachable (and metered) while every way around the enclave fails. Needs root and dockerd,
which `make test` provides."""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from enclave.hub.network import install
from enclave.registry import audit, datasets, grants, people, projects, sessions, volumes
from enclave.registry.credentials import set_password
from enclave.registry.db import make_engine, session_scope, upgrade
from tests.docker_stack import notebook_image, private_network
from tests.e2e.kernel import Server
from tests.gateway_fixtures import build_tiny_model
from tests.helpers import OPERATOR, approved_project
from tests.hub_stack import Browser, progress, running_stack, spawn

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]

ALICE_PASSWORD = "alice-password-e2e"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BOB_PASSWORD = "bob-password-e2e1"
RITA_PASSWORD = "rita-password-e2e"
DAVE_PASSWORD = "dave-password-e2e"
# Dave's project p3 may send this much to browsers per day: enough for the test's own REST calls,
# not for pulling copies of the dataset out through the contents API.
DAVE_VIEW_BUDGET = 6 * 1024**2


@pytest.fixture(scope="module")
def image_id(docker_client):
    return notebook_image()


@pytest.fixture(scope="module")
def enclave_net(docker_client):
    """A private copy of the enclave network and firewall, on a subnet of its own (removed with its
    containers, work volumes and firewall chains)."""
    with private_network(docker_client, tag="enct", prefix="10.213") as net:
        yield net


@pytest.fixture(scope="module")
def outside(docker_client, image_id):
    """A host "outside" the enclave, standing for the internet: a web server on another Docker
    network of ours. Yields (name, address, that network's gateway: the host's address on it)."""
    name = f"outside-{uuid.uuid4().hex[:6]}"
    net = docker_client.networks.create(name, driver="bridge")
    container = docker_client.containers.run(image_id, ["python3", "-m", "http.server", "8080"], name=name,
                                             network=name, detach=True, remove=True, user="1000:1000")
    container.reload()
    ip = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
    net.reload()
    gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
    yield name, ip, gateway
    with contextlib.suppress(Exception):
        container.kill()
    with contextlib.suppress(Exception):
        net.remove()


@pytest.fixture(scope="module")
def host_listener(enclave_net):
    """Another service on the host, listening on every address: notebooks must not reach it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve():
        sock.settimeout(0.5)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = sock.accept()
                conn.sendall(b"host secret\n")
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, enclave_net, image_id, outside, host_listener):
    tmp = tmp_path_factory.mktemp("e2e")
    db_url = f"sqlite:///{tmp / 'enclave.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    data = tmp / "people.csv"
    data.write_text("name,dob,sex,zip\nAda Byron,1815-12-10,F,02139\n")
    model_dir = build_tiny_model(tmp / "model")
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    approved_project(engine, "p1", "alice")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p1", mem_bytes=1024**3, cpu=1.0)
        datasets.register(s, OPERATOR, "census", str(data), ["name", "dob", "sex", "zip"], "restricted")
        datasets.allow(s, OPERATOR, "census", "p1")
        people.add_person(s, OPERATOR, "bob", "Bob", "bob@example.org", roles=["scholar"])
        projects.create_project(s, OPERATOR, "p2", "Not yet", "bob", "Waiting for approval.")
        set_password(s, OPERATOR, "alice", ALICE_PASSWORD)
        set_password(s, OPERATOR, "bob", BOB_PASSWORD)
        people.add_person(s, OPERATOR, "carol", "Carol", "carol@example.org", roles=["scholar"])
        projects.add_member(s, OPERATOR, "p1", "carol")
        people.add_person(s, OPERATOR, "rita", "Rita", "rita@example.org", roles=["reviewer"])
        set_password(s, OPERATOR, "rita", RITA_PASSWORD)
    # Dave works in two projects: p3 (with the census and a small browser budget) and p1.
    approved_project(engine, "p3", "dave")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p3", mem_bytes=1024**3, cpu=1.0, view_bytes_per_day=DAVE_VIEW_BUDGET)
        datasets.allow(s, OPERATOR, "census", "p3")
        projects.add_member(s, OPERATOR, "p1", "dave")
        set_password(s, OPERATOR, "dave", DAVE_PASSWORD)
    with running_stack(tmp, db_url, mode="docker", image=image_id, model_dir=str(model_dir), gateway=True,
                       review=True, extra_env={"ENCLAVE_HOME": str(tmp / "home")},
                       network_name=enclave_net.name, bridge=enclave_net.bridge, subnet=enclave_net.subnet,
                       work_volume_template=f"{enclave_net.name}-work-{{username}}-{{project}}") as stack:
        s = stack.settings
        install(enclave_net, [s.hub_port, s.gateway_port, s.review_port])
        _wait_gateway(stack)
        yield {"stack": stack, "engine": engine, "model_dir": Path(model_dir), "outside": outside, "home": tmp / "home",
               "host_port": host_listener, "net": enclave_net}
    engine.dispose()


def _wait_gateway(stack, timeout=120):
    import httpx

    url = f"http://{stack.settings.service_ip}:{stack.settings.gateway_port}/v1/model"
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"gateway did not come up:\n{stack.log()[-3000:]}")


@pytest.fixture(scope="module")
def alice(world):
    stack = world["stack"]
    browser = Browser(stack)
    assert browser.login("alice", ALICE_PASSWORD).status_code == 302
    started = time.monotonic()
    reply = browser.hub_api("POST", "/users/alice/server", json={})
    assert reply.status_code in (201, 202), reply.text
    deadline = time.time() + 180
    while time.time() < deadline:
        server = (stack.user_model("alice").get("servers") or {}).get("")
        if server and server.get("ready"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"alice's server did not start:\n{stack.log()[-4000:]}")
    spawn_seconds = time.monotonic() - started
    # A token of her own to drive her server, as JupyterLab's cookie would.
    token = browser.hub_api("POST", "/users/alice/tokens", json={"scopes": ["access:servers!user=alice"],
                                                                  "note": "e2e"}).json()["token"]
    server = Server(f"{stack.public_url}/user/alice", token)
    yield {"browser": browser, "server": server, "spawn_seconds": spawn_seconds}
    server.close()
    browser.close()


def _inside(alice, code: str) -> dict:
    out = alice["server"].run(textwrap.dedent(code))
    return json.loads(out.strip().splitlines()[-1])


def test_a_gateway_call_works_and_is_charged(world, alice):
    from enclave.registry.models import UsageTotal

    result = _inside(alice, """
        import json, os, httpx
        r = httpx.post(os.environ["ENCLAVE_GATEWAY_URL"] + "/v1/generate",
                       headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
                       json={"prompt": "Hello", "max_new_tokens": 4, "seed": 1}, timeout=60)
        print(json.dumps({"status": r.status_code, "body": r.json(), "project": os.environ.get("ENCLAVE_PROJECT")}))
    """)
    assert result["status"] == 200, result
    assert result["project"] == "p1"
    with session_scope(world["engine"]) as s:
        project = projects.get_project(s, "p1")
        assert s.get(UsageTotal, project.id).tokens_used > 0


def test_b_no_egress_no_host_ports_no_outside_names(world, alice, docker_client):
    # Every probe aims at an address of ours: the outside container stands for the internet, and its
    # network's gateway for the host seen from another bridge. Nothing here leaves this machine.
    outside_name, outside_ip, outside_gateway = world["outside"]
    s = world["stack"].settings
    result = _inside(alice, f"""
        import json, socket
        def connect(host, port):
            try:
                socket.create_connection((host, port), timeout=3).close(); return "connected"
            except OSError as e:
                return type(e).__name__
        def resolve(name):
            try:
                return socket.getaddrinfo(name, 80)[0][4][0]
            except OSError as e:
                return type(e).__name__
        print(json.dumps({{
            "gateway": connect("{s.service_ip}", {s.gateway_port}),
            "outside": connect("{outside_ip}", 8080),
            "host_other_port": connect("{s.service_ip}", {world['host_port']}),
            "host_proxy_api": connect("{s.service_ip}", {s.proxy_api_port}),
            "other_bridge": connect("{outside_gateway}", {world['host_port']}),
            "outside_dns_port": connect("{outside_ip}", 53),
            "resolve_outside": resolve("{outside_name}"),
            "resolve_localhost": resolve("localhost"),
        }}))
    """)
    assert result["gateway"] == "connected", result  # the control: the allowed path works
    for probe in ("outside", "host_other_port", "host_proxy_api", "other_bridge", "outside_dns_port"):
        assert result[probe] != "connected", (probe, result)
    assert result["resolve_outside"] == "gaierror", result
    # Names that Docker's embedded resolver does not know itself it forwards, from the host's side
    # (CVE-2024-29018), to the container's DNS servers: the only one must be the sink where nothing
    # answers, so no query for an outside name ever leaves. (A lookup of a real outside name would
    # itself be traffic to a foreign address if this failed, so the configuration is checked.)
    (container,) = docker_client.containers.list(filters={"label": "enclave.user=alice"})
    assert container.attrs["HostConfig"]["Dns"] == [s.network.dns_sink]
    # Control for the probe itself: the kernel can connect to itself, so a refusal above is the firewall.


def test_b_no_reaching_another_scholars_notebook(world, alice, docker_client):
    stack = world["stack"]
    assert spawn(stack, "carol", timeout=120).get("ready")
    try:
        (carol,) = docker_client.containers.list(filters={"label": "enclave.user=carol"})
        carol_ip = carol.attrs["NetworkSettings"]["Networks"][world["net"].name]["IPAddress"]
        socket.create_connection((carol_ip, 8888), timeout=3).close()  # the control: the hub's proxy can
        result = _inside(alice, f"""
            import json, socket
            try:
                socket.create_connection(("{carol_ip}", 8888), timeout=3).close(); outcome = "connected"
            except OSError as e:
                outcome = type(e).__name__
            print(json.dumps({{"carol": outcome}}))
        """)
        assert result["carol"] != "connected", result
    finally:
        with stack.admin() as c:
            c.delete("/users/carol/server")


def test_c_no_model_weights_inside(world, alice):
    weights = sorted(world["model_dir"].glob("*.safetensors"))
    sizes = {p.stat().st_size: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights}
    result = _inside(alice, f"""
        import hashlib, json, os
        sizes = {json.dumps({str(k): v for k, v in sizes.items()})}
        suffixes = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5")
        found, same = [], []
        for root, dirs, files in os.walk("/", onerror=lambda e: None):
            if root.startswith(("/proc", "/sys", "/dev")):
                dirs[:] = []
                continue
            for name in files:
                path = os.path.join(root, name)
                try:
                    size = os.lstat(path).st_size
                except OSError:
                    continue
                if name.endswith(suffixes) and size > 1_000_000:
                    found.append(path)
                if str(size) in sizes:
                    with open(path, "rb") as f:
                        if hashlib.sha256(f.read()).hexdigest() == sizes[str(size)]:
                            same.append(path)
        try:
            import torch  # noqa
            has_torch = True
        except ImportError:
            has_torch = False
        print(json.dumps({{"found": found, "same": same, "torch": has_torch}}))
    """)
    assert result == {"found": [], "same": [], "torch": False}


def test_d_read_only_root_no_capabilities_not_root(alice):
    result = _inside(alice, """
        import json, os
        def write(path):
            try:
                open(path, "w").write("x"); return "written"
            except OSError as e:
                return e.strerror
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "etc": write("/etc/enclave-test"),
                          "usr": write("/usr/local/bin/x"), "tmp": write("/tmp/ok"),
                          "work": write(os.path.expanduser("~/work/ok.txt")),
                          "datasets": write(os.path.expanduser("~/datasets/census/x.csv")),
                          "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                          "no_new_privs": status["NoNewPrivs"].strip()}))
    """)
    assert result["uid"] != 0 and result["gid"] != 0, result
    assert result["etc"] == result["usr"] == "Read-only file system", result
    assert result["datasets"] == "Read-only file system", result
    assert result["tmp"] == result["work"] == "written", result
    assert int(result["cap_eff"], 16) == 0 and int(result["cap_bnd"], 16) == 0, result
    assert result["no_new_privs"] == "1", result


def test_e_no_download_around_review(alice):
    server = alice["server"]
    # A small work file and a notebook made in the kernel; a 2 MB file; the dataset is mounted.
    _inside(alice, """
        import json, os
        work = os.path.expanduser("~/work")
        open(os.path.join(work, "small.txt"), "w").write("a small result\\n")
        open(os.path.join(work, "big.txt"), "w").write("y" * 2_000_000)
        nb = {"cells": [{"cell_type": "code", "id": "c1", "source": "1+1", "metadata": {}, "outputs": [], "execution_count": None}],
              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        json.dump(nb, open(os.path.join(work, "nb.ipynb"), "w"))
        print(json.dumps(sorted(os.listdir(os.path.expanduser("~/datasets/census")))))
    """)
    assert server.get("/api/contents/work/small.txt").status_code == 200  # JupyterLab opens it
    opened = server.get("/api/contents/work/nb.ipynb")
    assert opened.status_code == 200, opened.text[-3000:]
    refused = {
        "files": server.get("/files/work/small.txt"),
        "files_case": server.get("/FILES/work/small.txt"),
        "nbconvert": server.get("/nbconvert/html/work/nb.ipynb?download=true"),
        "nbconvert_script": server.get("/nbconvert/script/work/nb.ipynb"),
        "big": server.get("/api/contents/work/big.txt"),
        "big_base64": server.get("/api/contents/work/big.txt?format=base64&type=file"),
        "dataset": server.get("/api/contents/datasets/census/people.csv"),
        "dataset_dotdot": server.get("/api/contents/work/../datasets/census/people.csv"),
        "dataset_encoded": server.get("/api/contents/datasets%2Fcensus%2Fpeople.csv"),
    }
    for name, reply in refused.items():
        assert reply.status_code in (403, 404), (name, reply.status_code, reply.text[:200])
        assert "a small result" not in reply.text and "Ada Byron" not in reply.text, name


def test_f_notebook_token_cannot_administer_or_read_others(world, alice):
    result = _inside(alice, """
        import json, os, httpx
        api = os.environ["JUPYTERHUB_API_URL"]
        h = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
        print(json.dumps({
            "list_users": httpx.get(api + "/users", headers=h).status_code,
            "read_bob": httpx.get(api + "/users/bob", headers=h).status_code,
            "new_token": httpx.post(api + "/users/alice/tokens", headers=h, json={}).status_code,
            "spawn_bob": httpx.post(api + "/users/bob/server", headers=h).status_code,
            "whoami": httpx.get(api + "/user", headers=h).json().get("scopes"),
        }))
    """)
    assert result["list_users"] == 403 and result["read_bob"] in (403, 404), result
    assert result["new_token"] == 403 and result["spawn_bob"] in (403, 404), result
    # Everything it holds is about alice herself, or the right to call the enclave's services.
    services = {"access:services!service=gateway", "access:services!service=review",
                "access:services!service=privacy"}
    assert all(scope in services or scope.endswith(("!user=alice", "!server=alice/")) for scope in result["whoami"]), result
    assert not any(scope.startswith(("admin", "list:", "tokens", "servers")) for scope in result["whoami"]), result


def test_g_unapproved_scholar_cannot_spawn(world):
    stack = world["stack"]
    bob = Browser(stack)
    assert bob.login("bob", BOB_PASSWORD).status_code == 302
    reply = bob.hub_api("POST", "/users/bob/server", json={})
    if reply.status_code < 400:  # the spawn was accepted as pending; it must then fail
        event = progress(stack, "bob", timeout=60)
        assert event.get("failed"), event
        message = event.get("message", "")
    else:
        message = reply.text
    assert "not approved" in message, message
    assert not (stack.user_model("bob").get("servers") or {}).get("")


def test_d_container_settings_from_the_grant(world, alice, docker_client, image_id):
    (container,) = docker_client.containers.list(filters={"label": "enclave.user=alice"})
    host = container.attrs["HostConfig"]
    assert container.attrs["Image"] == image_id  # pinned by ID
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 1024**3 and host["CpuQuota"] == host["CpuPeriod"] == 100_000  # grant: 1 GiB, 1 CPU
    assert host["PidsLimit"] == 512 and "/tmp" in host["Tmpfs"] and host["AutoRemove"]
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [world["net"].name]
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert not mounts["/home/scholar/datasets/census/people.csv"]["RW"]
    assert mounts["/home/scholar/work"]["Type"] == "volume" and mounts["/home/scholar/work"]["RW"]


@pytest.mark.chromium
def test_h_export_from_the_notebook_is_reviewed_in_the_browser_and_released(world, alice, chromium):
    """The airlock end to end: export from the notebook, a reviewer approves in Chromium, the
    signed manifest verifies."""
    import httpx

    stack = world["stack"]
    receipt = _inside(alice, """
        import json, os
        import enclave.client as ec
        path = os.path.expanduser("~/work/table1.csv")
        open(path, "w").write("region,patients\\nnorth,120\\nsouth,85\\n")
        print(json.dumps(ec.export([path], justification="Patients by region, for the paper",
                                   context="Counts of distinct patients; no cell under 10.")))
    """)
    review_api = f"http://{stack.settings.service_ip}:{stack.settings.review_port}"
    token = alice["browser"].hub_api("POST", "/users/alice/tokens", json={
        "scopes": ["access:services!service=review"], "note": "e2e"}).json()["token"]
    status = {}
    deadline = time.time() + 120
    while time.time() < deadline:
        status = httpx.get(f"{review_api}/api/exports/{receipt['id']}", headers={"Authorization": f"token {token}"}).json()
        if status.get("state") == "awaiting_review":
            break
        time.sleep(0.5)
    assert status.get("state") == "awaiting_review", status
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium.new_context().new_page()
    page.goto(f"{stack.public_url}/services/review/")
    page.fill("#username_input", "rita")
    page.fill("#password_input", RITA_PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(f"{stack.public_url}/services/review/**")
    page.click(f"text={receipt['id']}")
    page.wait_for_selector("h1 >> text=Export")
    page.screenshot(path=str(ARTIFACTS / "e2e-review-page.png"), full_page=True)
    page.fill("#reason", "Counts of 85 and over; nothing identifying.")
    page.click("button.approve")
    page.wait_for_selector("p.flash")
    deadline = time.time() + 60
    while time.time() < deadline:
        status = httpx.get(f"{review_api}/api/exports/{receipt['id']}", headers={"Authorization": f"token {token}"}).json()
        if status.get("state") == "released":
            break
        time.sleep(0.5)
    assert status["state"] == "released", status
    manifest = world["home"] / "releases" / "p1" / receipt["id"] / "manifest.json"
    verified = subprocess.run([sys.executable, "-m", "enclave.cli", "release", "verify", str(manifest)],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (manifest.parent / "files" / "table1.csv").read_text() == "region,patients\nnorth,120\nsouth,85\n"


def test_i_the_session_and_its_start_are_on_the_record(world, alice, image_id):
    """Logins, the spawn (image, mounts, limits), tokens and the lock-down's read log are registry
    audit events, not lines in a container's stdout."""
    alice["server"].get("/api/contents/work/small.txt")  # a read the lock-down logs
    engine = world["engine"]
    deadline = time.time() + 60
    while True:
        with session_scope(engine) as s:
            events = [(e.action, json.loads(e.details)) for e in audit.iter_events(s)]
        reads = [entry for action, d in events if action == "session.read_log" and d.get("project") == "p1"
                 for entry in d["entries"]]
        tokens = [d for action, d in events if action == "hub.token_created" and d["user"] == "alice"]
        if any(r["event"] == "contents_read" and r["path"] == "work/small.txt" for r in reads) and len(tokens) >= 2:
            break
        assert time.time() < deadline, f"read log or tokens not recorded: {reads[-5:]} {tokens}"
        time.sleep(1)
    assert any(a == "hub.login" and d["user"] == "alice" for a, d in events)
    started = [d for a, d in events if a == "session.started" and d["project"] == "p1" and d["mode"] == "docker"]
    assert started and started[0]["image"] == image_id
    assert started[0]["mounts"] == [{"dataset": "census", "path": str(Path(started[0]["mounts"][0]["path"]))}]
    assert started[0]["limits"]["mem_bytes"] == 1024**3
    assert any(t["note"].startswith("Server at") for t in tokens)  # the notebook's own token, too


def _start(stack, browser, name: str, project: str, timeout: float = 180) -> None:
    reply = browser.hub_api("POST", f"/users/{name}/server", json={"project": project})
    assert reply.status_code in (201, 202), reply.text
    deadline = time.time() + timeout
    while time.time() < deadline:
        server = (stack.user_model(name).get("servers") or {}).get("")
        if server and server.get("ready"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{name}'s server did not start:\n{stack.log()[-4000:]}")


def test_j_one_project_per_session_and_a_browser_budget_that_stops_a_bulk_pull(world, docker_client):
    """Dave is in p1 and p3 and starts a session for p3. From inside it, nothing acts for p1 (not
    the gateway, not an export), whatever header or token it uses. Then he copies the dataset into
    his work directory and pulls it out through the contents API as a script would: the host's
    counters charge his project's budget and the session is stopped, with the record kept."""
    stack, engine = world["stack"], world["engine"]
    browser = Browser(stack)
    assert browser.login("dave", DAVE_PASSWORD).status_code == 302
    _start(stack, browser, "dave", "p3")
    token = browser.hub_api("POST", "/users/dave/tokens", json={"scopes": ["access:servers!user=dave",
                            "access:services!service=gateway", "access:services!service=review"],
                            "note": "e2e"}).json()["token"]
    server = Server(f"{stack.public_url}/user/dave", token)
    try:
        result = _inside({"server": server}, f"""
            import json, os, httpx
            gw, rv = os.environ["ENCLAVE_GATEWAY_URL"], os.environ["ENCLAVE_REVIEW_URL"]
            own = {{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}}
            personal = {{"Authorization": "token {token}"}}  # a token made outside, typed into the notebook
            body = {{"prompt": "Hello", "max_new_tokens": 2, "seed": 1}}
            out = {{"project": os.environ.get("ENCLAVE_PROJECT")}}
            out["own_p3"] = httpx.post(gw + "/v1/generate", headers=own, json=body, timeout=60).status_code
            out["own_p1"] = httpx.post(gw + "/v1/generate", headers={{**own, "X-Enclave-Project": "p1"}}, json=body, timeout=60).text
            out["personal_p1"] = httpx.post(gw + "/v1/generate", headers={{**personal, "X-Enclave-Project": "p1"}}, json=body, timeout=60).text
            open(os.path.expanduser("~/work/t.csv"), "w").write("a,b\\n1,2\\n")
            files = {{"files": ("t.csv", open(os.path.expanduser("~/work/t.csv"), "rb"))}}
            data = {{"justification": "filed under another project", "context": ""}}
            out["export_p1"] = httpx.post(rv + "/api/exports", headers={{**own, "X-Enclave-Project": "p1"}}, files=files, data=data, timeout=60).text
            rows = open(os.path.expanduser("~/datasets/census/people.csv")).read()
            for i in range(20):
                open(os.path.expanduser(f"~/work/pull_{{i}}.csv"), "w").write((rows * (900_000 // len(rows)))[:900_000])
            print(json.dumps(out))
        """)
        assert result["project"] == "p3" and result["own_p3"] == 200, result
        for attempt in ("own_p1", "personal_p1", "export_p1"):
            assert "p3" in result[attempt] and "p1" in result[attempt] and "session" in result[attempt], (attempt, result)
        pulled, refused_at = 0, None
        started = time.monotonic()
        for i in range(20):
            try:
                reply = server.get(f"/api/contents/work/pull_{i}.csv", timeout=10)
            except Exception:  # dropped by the host firewall, or the server is gone
                refused_at = i
                break
            if reply.status_code != 200:
                refused_at = i
                break
            pulled += len(reply.content)
            time.sleep(0.5)
        assert refused_at is not None, f"pulled {pulled} bytes, nothing stopped it"
        assert pulled < DAVE_VIEW_BUDGET + 8 * 1024**2, pulled  # cut off within a few seconds' worth
        assert stack.wait_stopped("dave", timeout=60) < 60
        took = time.monotonic() - started
    finally:
        server.close()
    assert not docker_client.containers.list(filters={"label": "enclave.user=dave"}, all=True)  # removed
    with session_scope(engine) as s:
        (record,) = sessions.list_sessions(s, username="dave", project="p3")
        assert record.stopped_at is not None and record.stop_reason.startswith("view_budget"), record.stop_reason
        assert record.egress_bytes >= DAVE_VIEW_BUDGET
        events = [(e.action, json.loads(e.details)) for e in audit.iter_events(s)]
    assert sum(d["bytes"] for a, d in events if a == "session.egress" and d["session"] == record.id) >= 4 * 1024**2
    assert any(a == "session.stopped" and d["session"] == record.id and d["reason"].startswith("view_budget")
               for a, d in events)
    # The next start is refused, saying why, until the day is over.
    reply = browser.hub_api("POST", "/users/dave/server", json={"project": "p3"})
    message = reply.text if reply.status_code >= 400 else progress(stack, "dave", timeout=60).get("message", "")
    assert "browser egress budget" in message, message
    # His work volume was his and p3's alone.
    assert [v.name for v in docker_client.volumes.list(filters={"name": f"{world['net'].name}-work-dave"})] == [
        f"{world['net'].name}-work-dave-p3"], took
    browser.close()


def test_z_revocation_stops_the_server_and_the_next_call(world, alice):
    import httpx

    stack = world["stack"]
    gateway_token = alice["browser"].hub_api(
        "POST", "/users/alice/tokens", json={"scopes": ["access:services!service=gateway"], "note": "e2e"}).json()["token"]
    url = f"http://{stack.settings.service_ip}:{stack.settings.gateway_port}/v1/usage"
    assert httpx.get(url, headers={"Authorization": f"token {gateway_token}"}).status_code == 200
    with session_scope(world["engine"]) as s:
        projects.transition(s, OPERATOR, "p1", "revoke", reason="e2e")
    reply = httpx.get(url, headers={"Authorization": f"token {gateway_token}"})
    assert reply.status_code == 403 and "revoked" in reply.text
    assert stack.wait_stopped("alice", timeout=60) < 60
    # Her work volume for p1 is held: no session mounts it until an operator releases or destroys it.
    with session_scope(world["engine"]) as s:
        (volume,) = [v for v in volumes.list_volumes(s) if v.name.endswith("-work-alice-p1")]
        assert volume.state == "held" and "revoked" in volume.state_reason

