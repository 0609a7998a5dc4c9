"""The enclave network and its firewall: the rule set itself, and installing it for real."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import docker
import pytest

from enclave.hub.network import (EnclaveNetwork, FirewallError, ensure_network, forward_chain, forward_chain6,
                                 input_chain, input_chain6, install, rules, rules6, uninstall)

NET = EnclaveNetwork(name="n", bridge="enc0", subnet="172.30.0.0/24")


def test_addresses():
    assert NET.host_ip == "172.30.0.1"
    assert NET.dns_sink == "172.30.0.254"


def test_rule_set_allows_only_the_service_ports():
    chains = rules(NET, [8081, 8001, 8002, 8001])
    inbound = chains[input_chain(NET)]
    accepted = [r for r in inbound if r[-1] == "ACCEPT" and "--dport" in r]
    assert sorted(r[r.index("--dport") + 1] for r in accepted) == ["8001", "8002", "8081"]
    assert all(r[r.index("-d") + 1] == "172.30.0.1" for r in accepted)
    assert inbound[-1] == ["-j", "DROP"]  # everything else from the bridge into the host
    assert chains[forward_chain(NET)][-1] == ["-j", "DROP"]  # and everything it would route anywhere


def _iptables_rules(chain: str) -> list[str]:
    return subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True).stdout.splitlines()


@pytest.mark.docker
def test_install_is_idempotent_and_uninstall_removes_everything():
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        if os.environ.get("ENCLAVE_REQUIRE_DOCKER"):
            pytest.fail("installing the firewall needs root and iptables under `make test`")
        pytest.skip("needs root and iptables")
    net = EnclaveNetwork(name="t", bridge=f"enct{uuid.uuid4().hex[:6]}", subnet="10.213.7.0/24")
    try:
        install(net, [8081, 8001])
        install(net, [8081, 8001, 8002])
        inbound = _iptables_rules(input_chain(net))
        assert sum("--dport" in r for r in inbound) == 3 and inbound[-1].endswith("-j DROP")
        jumps = [r for r in _iptables_rules("INPUT") if input_chain(net) in r]
        assert len(jumps) == 1
        assert sum(forward_chain(net) in r for r in _iptables_rules("DOCKER-USER")) == 2
    finally:
        uninstall(net)
    assert not any(input_chain(net) in r for r in _iptables_rules("INPUT"))
    assert not any(forward_chain(net) in r for r in _iptables_rules("DOCKER-USER"))


@pytest.mark.docker
def test_a_foreign_network_of_the_same_name_is_refused(docker_client):
    client = docker_client
    name = f"enclave-foreign-{uuid.uuid4().hex[:6]}"
    foreign = client.networks.create(name, driver="bridge")  # not internal
    try:
        with pytest.raises(FirewallError, match="not the enclave's internal network"):
            ensure_network(client, EnclaveNetwork(name=name, bridge="encx0", subnet="10.213.8.0/24"))
    finally:
        foreign.remove()


# --- IPv6 (issue 11, item 9): the enclave network carries none, and the firewall drops it all ---

def _ip6tables_rules(chain: str) -> list[str]:
    return subprocess.run(["ip6tables", "-w", "-S", chain], capture_output=True, text=True).stdout.splitlines()


def _needs_root_and_ip6tables():
    if os.geteuid() != 0 or shutil.which("ip6tables") is None or shutil.which("ip") is None:
        if os.environ.get("ENCLAVE_REQUIRE_DOCKER"):
            pytest.fail("the IPv6 firewall tests need root, ip6tables and iproute2 under `make test`")
        pytest.skip("needs root, ip6tables and iproute2")


def test_the_ipv6_rule_set_drops_everything_from_and_to_the_bridge():
    chains = rules6(NET)
    assert chains == {input_chain6(NET): [["-j", "DROP"]], forward_chain6(NET): [["-j", "DROP"]]}


@pytest.mark.docker
def test_ipv6_rules_are_installed_idempotently_and_removed():
    _needs_root_and_ip6tables()
    net = EnclaveNetwork(name="t", bridge=f"enc6{uuid.uuid4().hex[:6]}", subnet="10.213.9.0/24")
    try:
        install(net, [8081, 8001])
        install(net, [8081, 8001, 8002])
        assert _ip6tables_rules(input_chain6(net))[-1].endswith("-j DROP")
        assert _ip6tables_rules(forward_chain6(net))[-1].endswith("-j DROP")
        assert sum(input_chain6(net) in r for r in _ip6tables_rules("INPUT")) == 1
        assert sum(forward_chain6(net) in r for r in _ip6tables_rules("FORWARD")) == 2  # in and out
    finally:
        uninstall(net)
    assert not any(input_chain6(net) in r for r in _ip6tables_rules("INPUT"))
    assert not any(forward_chain6(net) in r for r in _ip6tables_rules("FORWARD"))
    assert subprocess.run(["ip6tables", "-w", "-n", "-L", input_chain6(net)], capture_output=True).returncode != 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _connect6_from(netns: str, address: str, port: int) -> bool:
    """Whether a TCP connection from inside `netns` to [address]:port is accepted (2 s)."""
    probe = ("import socket,sys\ns=socket.socket(socket.AF_INET6)\ns.settimeout(2)\n"
             f"try:\n s.connect(({address!r},{port}))\nexcept OSError:\n sys.exit(1)\n")
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.docker
def test_ipv6_from_the_bridge_is_dropped_by_the_installed_firewall():
    """A packet test with our own bridge, veth and network namespace (ULA addresses, nothing routed
    beyond them): a notebook-side TCP connection over IPv6 to the host gets through without the
    firewall (the control) and not with it."""
    _needs_root_and_ip6tables()
    tag = uuid.uuid4().hex[:6]
    net = EnclaveNetwork(name="t", bridge=f"enc6b{tag}", subnet="10.213.10.0/24")
    netns, host_end, ns_end = f"enc6ns{tag}", f"enc6h{tag}", f"enc6n{tag}"
    host_ip6, ns_ip6 = "fd00:e11:c1a::1", "fd00:e11:c1a::2"
    listener = socket.socket(socket.AF_INET6)
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", netns)
        _ip("link", "set", host_end, "master", net.bridge)
        _ip("addr", "add", f"{host_ip6}/64", "dev", net.bridge, "nodad")
        _ip("link", "set", host_end, "up")
        _ip("link", "set", net.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{ns_ip6}/64", "dev", ns_end, "nodad")
        _ip("-n", netns, "link", "set", ns_end, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        listener.bind((host_ip6, 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        deadline = time.monotonic() + 10  # the bridge port needs a moment to forward
        while not _connect6_from(netns, host_ip6, port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _connect6_from(netns, host_ip6, port), "control: IPv6 across the test bridge should work unfiltered"
        install(net, [port])  # even a port the IPv4 rules allow stays closed over IPv6
        assert not _connect6_from(netns, host_ip6, port)
        uninstall(net)
        assert _connect6_from(netns, host_ip6, port)
    finally:
        listener.close()
        uninstall(net)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "link", "del", net.bridge], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.mark.docker
def test_a_network_of_the_same_name_with_ipv6_is_refused(docker_client):
    client = docker_client
    name = f"enclave-v6-{uuid.uuid4().hex[:6]}"
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.213.11.0/24"),
                                                 docker.types.IPAMPool(subnet="fd00:e11:c1b::/64")])
    foreign = client.networks.create(name, driver="bridge", internal=True, enable_ipv6=True, ipam=ipam,
                                     options={"com.docker.network.bridge.name": "encv6x0"})
    try:
        with pytest.raises(FirewallError, match="IPv6"):
            ensure_network(client, EnclaveNetwork(name=name, bridge="encv6x0", subnet="10.213.11.0/24"))
    finally:
        foreign.remove()


@pytest.mark.docker
def test_the_enclave_network_is_created_without_ipv6(docker_client):
    client = docker_client
    net = EnclaveNetwork(name=f"enclave-v4-{uuid.uuid4().hex[:6]}", bridge=f"enc4{uuid.uuid4().hex[:6]}",
                         subnet="10.213.12.0/24")
    created = ensure_network(client, net)
    try:
        created.reload()
        assert created.attrs.get("EnableIPv6") is False
        assert all(":" not in (c.get("Subnet") or "") for c in created.attrs["IPAM"]["Config"])
    finally:
        created.remove()
