"""The enclave network and its firewall: the rule set itself, and installing it for real."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from enclave.hub.network import EnclaveNetwork, FirewallError, ensure_network, forward_chain, input_chain, install, rules, uninstall

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
