#!/bin/sh
# The compose hub's start: the firewall of the hub's own network namespace, then JupyterHub.
#
# The proxy runs here, so everything a notebook server sends towards a browser arrives in this
# namespace, from port 8888 of a container on the enclave network. It passes the per-session byte
# counters first (the chain ENC-EGR-<bridge> that enclave.hub.egress fills and the warden reads;
# notebook code cannot reach this namespace to reset them). From the enclave network, nothing but
# the hub API and replies to the hub's and the proxy's own connections is let in: not the proxy's
# public port, not its API. Needs NET_ADMIN (compose.yaml grants it to this container only).
set -eu
: "${ENCLAVE_BRIDGE:?}" "${ENCLAVE_SUBNET:?}" "${ENCLAVE_HUB_PORT:=8081}"
egress="ENC-EGR-$ENCLAVE_BRIDGE"
guard="ENC-HUB-IN"
iptables -w -n -L "$egress" >/dev/null 2>&1 || iptables -w -N "$egress"
iptables -w -n -L "$guard" >/dev/null 2>&1 || iptables -w -N "$guard"
iptables -w -F "$guard"
iptables -w -A "$guard" -p tcp --sport 8888 -j "$egress"
iptables -w -A "$guard" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
iptables -w -A "$guard" -p tcp --dport "$ENCLAVE_HUB_PORT" -j ACCEPT
iptables -w -A "$guard" -j DROP
# Not what the hub sends itself (JupyterHub checks its proxy at this container's own addresses).
iptables -w -C INPUT -s "$ENCLAVE_SUBNET" ! -i lo -j "$guard" 2>/dev/null \
    || iptables -w -I INPUT 1 -s "$ENCLAVE_SUBNET" ! -i lo -j "$guard"
mkdir -p "${ENCLAVE_HUB_STATE:=/var/lib/enclave-hub}"
cd "$ENCLAVE_HUB_STATE"
exec jupyterhub -f /etc/enclave/jupyterhub_config.py "$@"
