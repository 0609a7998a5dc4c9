"""What the Docker-mode tests share: the notebook image and a private copy of the enclave network
(its own name, bridge and subnet, so that tests running at the same time never meet), torn down
with everything on it: the notebook containers, their work volumes, the firewall's chains."""
from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator

from enclave.hub.network import EnclaveNetwork, ensure_network, uninstall


def notebook_image() -> str:
    """The notebook image's ID, built when missing (cached by content: a no-op once built)."""
    from enclave.hub.image import build_image
    from enclave.hub.launch import REPO_ROOT

    return build_image(REPO_ROOT)


def _subnets_in_use(client) -> list[ipaddress.IPv4Network]:
    used = []
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, TypeError):
                subnet = ipaddress.ip_network(config.get("Subnet"))
                if subnet.version == 4:
                    used.append(subnet)
    return used


def free_subnet(client, prefix: str) -> str:
    """A /24 under `prefix` ("10.214") that no Docker network holds now."""
    used = _subnets_in_use(client)
    for _ in range(50):
        subnet = ipaddress.ip_network(f"{prefix}.{secrets.randbelow(230) + 20}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return str(subnet)
    raise RuntimeError(f"no free /24 under {prefix}.0.0/16 for a test network")


def enclave_network(client, tag: str = "encl", prefix: str = "10.214") -> EnclaveNetwork:
    """A fresh name, bridge and subnet for a private enclave network (not created yet)."""
    suffix = uuid.uuid4().hex[:6]
    return EnclaveNetwork(name=f"{tag}-test-{suffix}", bridge=f"{tag}{suffix}", subnet=free_subnet(client, prefix))


def work_volume_template(net: EnclaveNetwork) -> str:
    """The notebooks' work volumes on `net` (one per scholar and project), named so that the
    teardown finds them."""
    return f"{net.name}-work-{{username}}-{{project}}"


def work_volumes(client, net: EnclaveNetwork, username: str) -> list[str]:
    return [v.name for v in client.volumes.list(filters={"name": f"{net.name}-work-"}) if username in v.name]


def remove_network(client, net: EnclaveNetwork) -> None:
    """Everything of `net`: its containers (forced), the firewall's chains and jumps, the network,
    and the work volumes named after it. Each step runs even when an earlier one fails."""
    import docker.errors

    for container in client.containers.list(all=True, filters={"network": net.name}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
    with contextlib.suppress(Exception):
        uninstall(net)
    drop_chains(net.bridge)
    with contextlib.suppress(docker.errors.NotFound):
        network = client.networks.get(net.name)
        network.reload()
        for container in network.containers:
            with contextlib.suppress(docker.errors.APIError):
                network.disconnect(container, force=True)
        network.remove()
    for volume in client.volumes.list(filters={"name": f"{net.name}-work-"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            volume.remove(force=True)


def drop_chains(bridge: str) -> list[str]:
    """Every iptables and ip6tables rule and chain that names `bridge` (what `uninstall` removes,
    and whatever a newer firewall adds for the bridge that this test's copy of it does not know);
    returns the chains dropped."""
    dropped = []
    for tool in ("iptables", "ip6tables"):
        exe = shutil.which(tool)
        if exe is None:
            continue
        listing = subprocess.run([exe, "-w", "-S"], capture_output=True, text=True).stdout.splitlines()
        chains = [line.split()[1] for line in listing if line.startswith("-N ") and line.split()[1].endswith(bridge)]
        for line in listing:  # the jumps and matches in chains that are not ours
            words = shlex.split(line)
            if words[:1] == ["-A"] and words[1] not in chains and (bridge in words or set(words) & set(chains)):
                subprocess.run([exe, "-w", "-D", *words[1:]], capture_output=True)
        for chain in chains:
            subprocess.run([exe, "-w", "-F", chain], capture_output=True)
        for chain in chains:
            if subprocess.run([exe, "-w", "-X", chain], capture_output=True).returncode == 0:
                dropped.append(f"{tool}:{chain}")
    return dropped


@contextlib.contextmanager
def private_network(client, tag: str = "encl", prefix: str = "10.214") -> Iterator[EnclaveNetwork]:
    """A private enclave network, created now and removed (with all of the above) afterwards."""
    net = enclave_network(client, tag, prefix)
    try:
        ensure_network(client, net)
        yield net
    finally:
        remove_network(client, net)
