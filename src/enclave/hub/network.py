"""The enclave's Docker network and the host firewall around it.

Notebook containers sit on one internal bridge network (no route out, no inter-container
traffic). The hub, gateway and review service run on the host and listen on the bridge's own
address. iptables then allows exactly those ports from the bridge into the host and drops
everything else the bridge sends: to the host's other ports (INPUT) and anywhere beyond,
other containers included (FORWARD, through Docker's DOCKER-USER chain, which Docker evaluates
before its own rules and never rewrites).

IPv6: the network is created with IPv6 explicitly off (and one of the same name with IPv6 on is
refused), and ip6tables drops every IPv6 packet from and to the bridge all the same (INPUT, and
FORWARD at its top plus Docker's ip6tables DOCKER-USER where that exists), so an engine configured
for IPv6 later still opens no way around the IPv4 rules."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import subprocess



def input_chain(net: "EnclaveNetwork") -> str:
    return f"ENC-IN-{net.bridge}"  # per bridge, so two enclaves (or a test's) never share rules


def egress_chain(net: "EnclaveNetwork") -> str:
    return f"ENC-EGR-{net.bridge}"  # per-session byte counters (enclave.hub.egress)


def forward_chain(net: "EnclaveNetwork") -> str:
    return f"ENC-FWD-{net.bridge}"


def input_chain6(net: "EnclaveNetwork") -> str:
    return f"ENC6-IN-{net.bridge}"


def forward_chain6(net: "EnclaveNetwork") -> str:
    return f"ENC6-FWD-{net.bridge}"


class FirewallError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class EnclaveNetwork:
    name: str = "enclave-net"
    bridge: str = "enclave0"
    subnet: str = "172.30.0.0/24"

    @property
    def host_ip(self) -> str:
        """The bridge's own address: where the hub and services listen for notebooks."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def dns_sink(self) -> str:
        """An address in the subnet that no container gets and nothing answers on: notebooks'
        DNS server, so that every name outside the enclave fails to resolve."""
        return str(list(ipaddress.ip_network(self.subnet).hosts())[-1])


def ensure_network(client, net: EnclaveNetwork):
    """Create the internal network once; refuse one of the same name with other settings."""
    import docker.errors

    options = {"com.docker.network.bridge.name": net.bridge, "com.docker.network.bridge.enable_icc": "false"}
    try:
        existing = client.networks.get(net.name)
    except docker.errors.NotFound:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
            subnet=net.subnet, gateway=net.host_ip, iprange=_container_range(net))])
        return client.networks.create(net.name, driver="bridge", internal=True, ipam=ipam, options=options,
                                      enable_ipv6=False, labels={"enclave": "network"})
    attrs = existing.attrs
    subnets = [c.get("Subnet") for c in (attrs.get("IPAM") or {}).get("Config") or []]
    if not attrs.get("Internal") or net.subnet not in subnets or attrs.get("Options", {}).get(
            "com.docker.network.bridge.name") != net.bridge:
        raise FirewallError(f"Docker network {net.name!r} exists but is not the enclave's internal network "
                            f"(subnet {net.subnet}, bridge {net.bridge}); remove it or choose another name")
    if attrs.get("EnableIPv6") or any(":" in (s or "") for s in subnets):
        raise FirewallError(f"Docker network {net.name!r} has IPv6 enabled; the enclave's network carries IPv4 "
                            "only: remove it (docker network rm) and start again")
    return existing


def _container_range(net: EnclaveNetwork) -> str:
    # Containers get the lower half, so the DNS sink at the top of the subnet is never assigned.
    network = ipaddress.ip_network(net.subnet)
    return str(list(network.subnets(prefixlen_diff=1))[0])


# The port notebook servers listen on inside their containers (DockerSpawner's default).
NOTEBOOK_PORT = 8888


def rules(net: "EnclaveNetwork", allowed_ports: list[int], notebook_port: int = NOTEBOOK_PORT,
          ) -> dict[str, list[list[str]]]:
    """The rule set, as iptables argument lists per chain (pure, so it can be tested and shown).
    The egress chain itself holds one counter per session (the spawner adds them)."""
    established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
    # First, before anything is accepted: what notebook servers send towards browsers is counted.
    input_rules = [["-p", "tcp", "--sport", str(notebook_port), "-j", egress_chain(net)],
                   established + ["-j", "ACCEPT"]]
    for port in sorted(set(allowed_ports)):
        input_rules.append(["-p", "tcp", "-d", net.host_ip, "--dport", str(port), "-j", "ACCEPT"])
    input_rules.append(["-j", "DROP"])
    forward_rules = [established + ["-j", "RETURN"], ["-j", "DROP"]]
    return {input_chain(net): input_rules, forward_chain(net): forward_rules}


def rules6(net: "EnclaveNetwork") -> dict[str, list[list[str]]]:
    """The IPv6 rule set: nothing at all, either way (the services listen on IPv4 only)."""
    return {input_chain6(net): [["-j", "DROP"]], forward_chain6(net): [["-j", "DROP"]]}


def _run(tool: str, args: tuple[str, ...], check: bool) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    if exe is None:
        raise FirewallError(f"{tool} is missing (apt-get install iptables)")
    done = subprocess.run([exe, "-w", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise FirewallError(f"{tool} {' '.join(args)}: {done.stderr.strip()}")
    return done


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("iptables", args, check)


def _ip6tables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ip6tables", args, check)


def _ipv6_in_kernel() -> bool:
    return os.path.exists("/proc/net/if_inet6")


def _load(tables, chains: dict[str, list[list[str]]], jumps: list[tuple[str, list[str]]]) -> None:
    """Fill our chains afresh and jump to them from the top of the built-in ones (idempotent);
    `tables` is `iptables` or `_ip6tables`."""
    for chain, chain_rules in chains.items():
        if tables("-n", "-L", chain, check=False).returncode != 0:
            tables("-N", chain)
        tables("-F", chain)
        for rule in chain_rules:
            tables("-A", chain, *rule)
    for chain, jump in jumps:
        if chain == "DOCKER-USER" and tables("-n", "-L", "DOCKER-USER", check=False).returncode != 0:
            tables("-N", "DOCKER-USER")
        if tables("-C", chain, *jump, check=False).returncode != 0:
            tables("-I", chain, "1", *jump)


def _unload(tables, chains: tuple[str, ...], jumps: list[tuple[str, list[str]]]) -> None:
    """Remove our jumps and chains (the opposite of `_load`)."""
    for chain, jump in jumps:
        while tables("-C", chain, *jump, check=False).returncode == 0:
            tables("-D", chain, *jump)
    for chain in chains:
        if tables("-n", "-L", chain, check=False).returncode == 0:
            tables("-F", chain)
            tables("-X", chain)


def install(net: EnclaveNetwork, allowed_ports: list[int]) -> None:
    """Install (or refresh) the rules; idempotent. Needs root."""
    # Created if missing but never flushed here: it holds the counters of sessions that may
    # outlive this hub (a restart must not reset what they have sent).
    if iptables("-n", "-L", egress_chain(net), check=False).returncode != 0:
        iptables("-N", egress_chain(net))
    _load(iptables, rules(net, allowed_ports), _jumps(net))
    if shutil.which("ip6tables") is None and not _ipv6_in_kernel():
        return  # a kernel without IPv6 carries none
    _load(_ip6tables, rules6(net), _jumps6(net))


def _jumps6(net: EnclaveNetwork) -> list[tuple[str, list[str]]]:
    """INPUT, and FORWARD at its top; Docker's DOCKER-USER too when Docker manages ip6tables, whose
    own jumps may later be inserted above ours in FORWARD."""
    jumps = [("INPUT", ["-i", net.bridge, "-j", input_chain6(net)])]
    forward = ["FORWARD"]
    if _ip6tables("-n", "-L", "DOCKER-USER", check=False).returncode == 0:
        forward.append("DOCKER-USER")
    for chain in forward:
        jumps += [(chain, ["-i", net.bridge, "-j", forward_chain6(net)]),
                  (chain, ["-o", net.bridge, "-j", forward_chain6(net)])]
    return jumps


def _jumps(net: EnclaveNetwork) -> list[tuple[str, list[str]]]:
    return [("INPUT", ["-i", net.bridge, "-j", input_chain(net)]),
            ("DOCKER-USER", ["-i", net.bridge, "-j", forward_chain(net)]),
            ("DOCKER-USER", ["-o", net.bridge, "-j", forward_chain(net)])]


def uninstall(net: EnclaveNetwork) -> None:
    # The input chain jumps to the egress chain: it goes first.
    _unload(iptables, (input_chain(net), forward_chain(net), egress_chain(net)), _jumps(net))
    if shutil.which("ip6tables") is None:
        return
    _unload(_ip6tables, (input_chain6(net), forward_chain6(net)), _jumps6(net))
