"""How quickly the reading room opens: hub start time, spawn time (p50/p95 over N sequential
spawns) and N scholars spawning at once, with the real Docker engine and the enclave image.

    .venv/bin/python bench/hub.py [--json] [--spawns 10] [--concurrent 10]

Needs root and dockerd (scripts/start-dockerd.sh). Not a test: it prints numbers."""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.hub.config import EnclaveHubSettings  # noqa: E402
from enclave.hub.image import build_image  # noqa: E402
from enclave.hub.launch import REPO_ROOT, docker_client, ensure_dockerd, hub_environment, start_hub  # noqa: E402
from enclave.hub.network import EnclaveNetwork, ensure_network, install, uninstall  # noqa: E402
from enclave.registry import grants, people, projects  # noqa: E402
from enclave.registry.clock import end_of_day, utcnow  # noqa: E402
from enclave.registry.credentials import set_password  # noqa: E402
from enclave.registry.db import make_engine, session_scope, upgrade  # noqa: E402


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(db_url: str, users: list[str]) -> dict[str, str]:
    import datetime as dt

    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, "op", "op", "Op", "op@example.org", roles=["operator"], bootstrap=True)
        for u in users:
            people.add_person(s, "op", u, u, f"{u}@example.org", roles=["scholar"])
        projects.create_project(s, "op", "bench", "Bench", users[0], "Measure spawns.")
        projects.transition(s, "op", "bench", "approve", until=end_of_day((utcnow() + dt.timedelta(days=1)).date()))
        grants.set_grant(s, "op", "bench", mem_bytes=512 * 1024**2, cpu=0.5)
        for u in users[1:]:
            projects.add_member(s, "op", "bench", u)
        passwords = {u: set_password(s, "op", u) for u in users}
    engine.dispose()
    return passwords


def log_in(public_url: str, name: str, password: str) -> None:
    """Make `name` a hub user: people become one by logging in (no service may create users)."""
    with httpx.Client(base_url=public_url, timeout=60) as browser:
        form = re.search(r'name="_xsrf" value="([^"]+)"', browser.get("/hub/login").text)
        reply = browser.post("/hub/login?next=", data={"username": name, "password": password,
                                                       "_xsrf": form.group(1) if form else ""})
        if reply.status_code != 302:
            raise RuntimeError(f"{name}: login refused: {reply.status_code}")


def wait_ready(api: httpx.Client, name: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        server = (api.get(f"/users/{name}").json().get("servers") or {}).get("")
        if server and server.get("ready"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name}: not ready after {timeout} s")


def wait_stopped(api: httpx.Client, name: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not (api.get(f"/users/{name}").json().get("servers") or {}).get(""):
            return
        time.sleep(0.2)


def spawn_once(api: httpx.Client, name: str) -> float:
    started = time.perf_counter()
    reply = api.post(f"/users/{name}/server")
    if reply.status_code not in (201, 202):
        raise RuntimeError(f"{name}: spawn refused: {reply.status_code} {reply.text}")
    wait_ready(api, name)
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--spawns", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=10)
    args = parser.parse_args()

    ensure_dockerd(Path(tempfile.gettempdir()))
    t0 = time.perf_counter()
    image = build_image(REPO_ROOT)
    image_s = time.perf_counter() - t0
    users = [f"scholar{i}" for i in range(max(args.concurrent, 1))]
    tag = uuid.uuid4().hex[:6]
    net = EnclaveNetwork(name=f"enclave-bench-{tag}", bridge=f"encb{tag}", subnet="10.214.250.0/24")
    client = docker_client()
    network = ensure_network(client, net)
    result: dict = {"image_seconds_cached_or_built": round(image_s, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/enclave.db"
        passwords = seed(db_url, users)
        port = free_port()
        settings = EnclaveHubSettings(mode="docker", state_dir=f"{tmp}/hub", public_url=f"http://127.0.0.1:{port}",
                                      hub_port=free_port(), proxy_api_port=free_port(), gateway=False,
                                      network_name=net.name, bridge=net.bridge, subnet=net.subnet, image=image,
                                      work_volume_template=f"{net.name}-work-{{username}}-{{project}}")
        install(net, [settings.hub_port])
        token = secrets.token_hex(24)
        env = hub_environment(settings, image, {"ENCLAVE_DB_URL": db_url, "ENCLAVE_HUB_OPERATOR_TOKEN": token})
        t0 = time.perf_counter()
        hub = start_hub(env, Path(settings.state_dir), Path(tmp) / "hub.log")
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}/hub/api", headers={"Authorization": f"token {token}"},
                           timeout=60)
        try:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if api.get("/").status_code == 200:
                        break
                if hub.poll() is not None:
                    raise RuntimeError((Path(tmp) / "hub.log").read_text()[-3000:])
                time.sleep(0.05)
            result["hub_start_seconds"] = round(time.perf_counter() - t0, 2)
            for u in users:
                log_in(f"http://127.0.0.1:{port}", u, passwords[u])
            sequential = []
            for _ in range(args.spawns):
                sequential.append(spawn_once(api, users[0]))
                api.delete(f"/users/{users[0]}/server")
                wait_stopped(api, users[0])
            result["spawn_seconds_p50"] = round(statistics.median(sequential), 2)
            result["spawn_seconds_p95"] = round(pct(sequential, 0.95), 2)
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
                each = list(pool.map(lambda u: spawn_once(api, u), users[: args.concurrent]))
            result["concurrent_users"] = args.concurrent
            result["concurrent_all_ready_seconds"] = round(time.perf_counter() - t0, 2)
            result["concurrent_spawn_p50"] = round(statistics.median(each), 2)
            result["concurrent_spawn_max"] = round(max(each), 2)
            for u in users[: args.concurrent]:
                api.delete(f"/users/{u}/server")
            for u in users[: args.concurrent]:
                wait_stopped(api, u)
        finally:
            hub.terminate()
            hub.wait(timeout=60)
            api.close()
            uninstall(net)
            for volume in client.volumes.list(filters={"name": f"{net.name}-work-"}):
                with contextlib.suppress(Exception):
                    volume.remove(force=True)
            with contextlib.suppress(Exception):
                network.remove()
            client.close()
    result["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>32}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
