#!/bin/sh
# The one rule the compose stack needs in the host's own tables (this container shares the host's
# network namespace, with NET_ADMIN, and nothing else): nothing that arrives from the enclave
# bridge is for the host itself. Notebooks' traffic to the hub, gateway and review containers is
# bridged and never reaches the host's INPUT; without this rule a notebook could open any port
# the host listens on, at the bridge's own address (IPv4, or IPv6 link-local). Removed again when
# the container stops (`docker-compose down`); installing it twice is harmless.
set -eu
: "${ENCLAVE_BRIDGE:?}"
chain="ENC-CIN-$ENCLAVE_BRIDGE"
load() {
    tool=$1
    $tool -w -n -L "$chain" >/dev/null 2>&1 || $tool -w -N "$chain"
    $tool -w -F "$chain"
    $tool -w -A "$chain" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    $tool -w -A "$chain" -j DROP
    $tool -w -C INPUT -i "$ENCLAVE_BRIDGE" -j "$chain" 2>/dev/null || $tool -w -I INPUT 1 -i "$ENCLAVE_BRIDGE" -j "$chain"
}
unload() {
    tool=$1
    while $tool -w -C INPUT -i "$ENCLAVE_BRIDGE" -j "$chain" 2>/dev/null; do
        $tool -w -D INPUT -i "$ENCLAVE_BRIDGE" -j "$chain"
    done
    $tool -w -F "$chain" 2>/dev/null || true
    $tool -w -X "$chain" 2>/dev/null || true
}
stop() {
    unload iptables
    unload ip6tables 2>/dev/null || true
    exit 0
}
trap stop TERM INT
load iptables
if [ -e /proc/net/if_inet6 ]; then load ip6tables; fi
echo "enclave host firewall: nothing from $ENCLAVE_BRIDGE reaches this host's own ports"
while :; do sleep 3600 & wait $!; done
