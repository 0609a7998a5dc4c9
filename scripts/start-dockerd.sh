#!/usr/bin/env bash
# Start Debian's dockerd when no Docker engine answers (as root; a fresh CI machine has none
# running). Idempotent; prints nothing when the engine is already up.
set -euo pipefail
sock=/var/run/docker.sock
engine_up() { [[ -S $sock ]] && curl -fsS --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }
engine_up && exit 0
if ! command -v dockerd >/dev/null; then
    echo "setup: no Docker engine (apt-get install docker.io)" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup: no Docker engine running, and starting dockerd needs root" >&2
    exit 0
fi
mkdir -p var/log
echo "setup: starting dockerd (log: var/log/dockerd.log)" >&2
nohup dockerd >>var/log/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    engine_up && exit 0
    sleep 0.5
done
echo "setup: dockerd did not answer in 30 s; see var/log/dockerd.log" >&2
exit 1
