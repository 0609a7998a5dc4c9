"""Browser egress, counted on the host: one byte counter per notebook container in the firewall.

Everything a notebook server sends towards a browser (pages, the contents API, kernel output)
leaves its container as TCP from the server's port to the proxy on the host, so it enters the host
through the enclave bridge and the INPUT chain. The network's input chain sends those packets
through a chain of ours (`ENC-EGR-<bridge>`) holding, per session, a counting rule that matches
the container's address (no target: it only counts) and, once the session's budget is spent, a
DROP rule. Notebook code cannot see or reset these counters: they live in the host's kernel.
The spawner adds a session's rule before the server answers anyone and removes it after the stop;
the warden reads all counters with one call every few seconds and charges them to the registry."""
from __future__ import annotations

import re

from enclave.hub.network import EnclaveNetwork, FirewallError, egress_chain, iptables

_COUNT = "enclave-session:"
_BLOCK = "enclave-block:"
# `iptables -L -n -v -x` rows: pkts bytes target prot opt in out source destination ... /* comment */
_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s.*?/\* (enclave-(?:session|block):[0-9a-f]+) \*/")


def _count_rule(session_id: str, address: str) -> list[str]:
    return ["-s", address, "-m", "comment", "--comment", f"{_COUNT}{session_id}"]


def _block_rule(session_id: str, address: str) -> list[str]:
    return ["-s", address, "-m", "comment", "--comment", f"{_BLOCK}{session_id}", "-j", "DROP"]


def start_counting(net: EnclaveNetwork, session_id: str, address: str) -> None:
    """Add the session's counter (idempotent); raises FirewallError if the chain is missing (the
    enclave's firewall is not installed: no session may run unmetered)."""
    chain = egress_chain(net)
    if iptables("-n", "-L", chain, check=False).returncode != 0:
        raise FirewallError(f"the egress chain {chain} is missing: the enclave firewall is not installed")
    if iptables("-C", chain, *_count_rule(session_id, address), check=False).returncode != 0:
        iptables("-A", chain, *_count_rule(session_id, address))


def block(net: EnclaveNetwork, session_id: str, address: str) -> None:
    """Drop everything the session's server sends towards browsers from now on (budget spent)."""
    chain = egress_chain(net)
    if iptables("-C", chain, *_block_rule(session_id, address), check=False).returncode != 0:
        iptables("-A", chain, *_block_rule(session_id, address))


def stop_counting(net: EnclaveNetwork, session_id: str, address: str) -> None:
    chain = egress_chain(net)
    for rule in (_count_rule(session_id, address), _block_rule(session_id, address)):
        while iptables("-C", chain, *rule, check=False).returncode == 0:
            iptables("-D", chain, *rule)


def read_counters(net: EnclaveNetwork) -> dict[str, int]:
    """Bytes counted so far per session id (sessions without a rule are absent)."""
    listing = iptables("-n", "-v", "-x", "-L", egress_chain(net), check=False)
    if listing.returncode != 0:
        return {}
    counters: dict[str, int] = {}
    for line in listing.stdout.splitlines():
        match = _ROW.match(line)
        if match and match.group(3).startswith(_COUNT):
            counters[match.group(3)[len(_COUNT):]] = int(match.group(2))
    return counters


def blocked(net: EnclaveNetwork) -> set[str]:
    listing = iptables("-n", "-v", "-x", "-L", egress_chain(net), check=False)
    return {m.group(3)[len(_BLOCK):] for m in map(_ROW.match, listing.stdout.splitlines())
            if m and m.group(3).startswith(_BLOCK)} if listing.returncode == 0 else set()
