#!/usr/bin/env bash
# Install the Debian packages the enclave and its tests need, when they are missing.
# Only as root (a fresh CI machine); otherwise say what is missing and carry on.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v python3.11 >/dev/null || missing+=(python3.11 python3.11-venv)
command -v npm >/dev/null || missing+=(nodejs npm)
# The gateway compiles its CPU decode kernels on first use (src/enclave/gateway/cpu_kernels.py).
command -v g++ >/dev/null || missing+=(g++)
# The reading room: Docker engine, the image's debootstrap base, the host firewall.
command -v dockerd >/dev/null || missing+=(docker.io)
# deploy/compose.yaml's walk-through (tests/test_deploy_compose.py) runs Debian's docker-compose.
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v iptables >/dev/null || missing+=(iptables)
# The reviewer UI's browser tests drive Debian's Chromium (Playwright's own download cannot work).
[[ -x /usr/bin/chromium ]] || missing+=(chromium)

install_proxy() {
    # JupyterHub's proxy (npm); the enclave's hub and the hub-token tests need it.
    command -v configurable-http-proxy >/dev/null && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: configurable-http-proxy is missing (npm install -g configurable-http-proxy)" >&2
        return 0
    fi
    echo "setup: installing configurable-http-proxy (npm)" >&2
    npm install -g --silent configurable-http-proxy >/dev/null
}

if ((${#missing[@]} == 0)); then
    install_proxy
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing system packages: ${missing[*]} (run as root, or install them: apt-get install ${missing[*]})" >&2
    exit 0
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts a cluster on install; the enclave runs its own, so leave the system one stopped.
if command -v pg_ctlcluster >/dev/null; then
    for cluster in /etc/postgresql/*/main; do
        [[ -d $cluster ]] && pg_ctlcluster "$(basename "$(dirname "$cluster")")" main stop 2>/dev/null || true
    done
fi
install_proxy
