"""Browser egress counted where notebook code cannot reach it: real packets across a bridge of ours
into the host, counted per session by the firewall's egress chain, charged to the registry by the
warden, and dropped once the project's view budget is spent.

The "notebook" is a web server on port 8888 in a network namespace of ours behind a bridge of
ours (as a container sits behind the enclave bridge); the "browser" is the host fetching from it,
as the hub's proxy does. Nothing leaves this machine."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from enclave.hub import egress
from enclave.hub.network import EnclaveNetwork, FirewallError, install, uninstall
from enclave.hub.warden import Warden
from enclave.registry import audit, grants, sessions
from enclave.registry.db import session_scope
from enclave.registry.models import NotebookSession
from tests.helpers import OPERATOR, approved_project

pytestmark = pytest.mark.docker
MB = 1024**2


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def notebook(tmp_path):
    """(network, the notebook's address): a bridge, a veth into a namespace, and a web server on
    port 8888 in the namespace serving 4 MB."""
    if os.geteuid() != 0 or not shutil.which("iptables") or not shutil.which("ip"):
        if os.environ.get("ENCLAVE_REQUIRE_DOCKER"):
            pytest.fail("the egress counter tests need root, iptables and iproute2 under `make test`")
        pytest.skip("needs root, iptables and iproute2")
    tag = uuid.uuid4().hex[:6]
    net = EnclaveNetwork(name="t", bridge=f"encE{tag}", subnet="10.213.11.0/24")
    netns, host_end, ns_end = f"encEns{tag}", f"encEh{tag}", f"encEn{tag}"
    address = "10.213.11.2"
    (tmp_path / "data.bin").write_bytes(os.urandom(4 * MB))
    server = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", netns)
        _ip("link", "set", host_end, "master", net.bridge)
        _ip("addr", "add", "10.213.11.1/24", "dev", net.bridge)
        _ip("link", "set", host_end, "up")
        _ip("link", "set", net.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", ns_end)
        _ip("-n", netns, "link", "set", ns_end, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "8888",
                                   "--bind", address], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while _fetch(address) is None:
            assert time.monotonic() < deadline, "control: the notebook's server should answer across the bridge"
            time.sleep(0.3)
        install(net, [])
        yield net, address
    finally:
        if server is not None:
            server.kill()
        uninstall(net)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "link", "del", net.bridge], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _fetch(address: str, timeout: float = 3.0) -> int | None:
    """Bytes of the 4 MB file fetched from the notebook, or None if nothing came."""
    with contextlib.suppress(httpx.HTTPError):
        return len(httpx.get(f"http://{address}:8888/data.bin", timeout=timeout).content)
    return None


def test_what_the_notebook_sends_is_counted_per_session_and_can_be_cut_off(notebook):
    net, address = notebook
    egress.start_counting(net, "a1", address)
    egress.start_counting(net, "a1", address)  # idempotent: one rule
    assert _fetch(address) == 4 * MB
    counted = egress.read_counters(net)["a1"]
    assert 4 * MB <= counted < 5 * MB  # the payload plus headers
    assert _fetch(address) == 4 * MB
    assert egress.read_counters(net)["a1"] >= 8 * MB
    egress.block(net, "a1", address)
    assert egress.blocked(net) == {"a1"}
    assert _fetch(address) is None  # the budget is spent: nothing more reaches the "browser"
    egress.stop_counting(net, "a1", address)
    assert egress.read_counters(net) == {} and egress.blocked(net) == set()
    assert _fetch(address) == 4 * MB  # control: it was the block


def test_no_session_is_metered_without_the_firewall(notebook):
    net, address = notebook
    uninstall(net)
    with pytest.raises(FirewallError, match="egress chain .* is missing"):
        egress.start_counting(net, "a2", address)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_warden_charges_the_counters_and_stops_a_session_over_its_budget(notebook, engine):
    net, address = notebook
    approved_project(engine, "p1", "alice")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p1", view_bytes_per_day=6 * MB)
        sid = sessions.open_session(s, username="alice", project="p1", mode="docker", container_ip=address).id
    # The hub's REST API as the warden sees it: only the stop request matters here (the real hub
    # does it in tests/e2e); it is recorded, not performed.
    stops = []

    def hub_api(request: httpx.Request) -> httpx.Response:
        stops.append((request.method, request.url.path))
        return httpx.Response(204)

    warden = Warden(httpx.Client(base_url="http://hub.invalid/hub/api", transport=httpx.MockTransport(hub_api)),
                    engine, net)
    assert warden.meter() == []  # no rule yet (as after a firewall reinstall): the warden adds it
    assert sid in egress.read_counters(net)
    assert _fetch(address) == 4 * MB
    assert warden.meter() == []  # 4 MB of 6: within the budget
    with session_scope(engine) as s:
        assert 4 * MB <= s.get(NotebookSession, sid).egress_bytes < 5 * MB
    assert _fetch(address) == 4 * MB
    assert warden.meter() == [sid]  # over 6 MB: blocked at once and stopped
    assert stops == [("DELETE", "/hub/api/users/alice/server")]
    assert _fetch(address) is None
    with session_scope(engine) as s:
        record = s.get(NotebookSession, sid)
        assert record.stop_reason.startswith("view_budget: project 'p1' has spent today's browser egress budget")
        events = {e.action: json.loads(e.details) for e in audit.iter_events(s)}
        assert events["session.stop_requested"]["reason"] == record.stop_reason
        assert events["session.egress"]["total_bytes"] >= 4 * MB
