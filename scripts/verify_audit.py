#!/usr/bin/env python3
"""Verify an exported Model Enclave audit log with nothing but the Python standard library.

    enclave audit export --out audit.jsonl        # inside the enclave
    python3 verify_audit.py audit.jsonl [SEQ:HASH ...]   # anywhere

Each line is one event. Its hash is SHA-256 over the canonical JSON (keys sorted, separators ","
and ":", UTF-8, non-ASCII unescaped) of the object with exactly the keys seq, time, actor, action,
subject, details, prev_hash; the first event's prev_hash is 64 zeros and every later one is the
previous event's hash; seq counts 1, 2, 3, ... with no gaps. Optional SEQ:HASH arguments are heads
published earlier: the log must still pass through them. Exit 0 when intact, 1 otherwise.

The export holds the events only. The model calls' prompts and answers stay inside the enclave;
`enclave audit verify` (against the database) checks each of them against the SHA-256 digests its
event carries (prompt_sha256, outputs_sha256 in the event's details).
"""

import hashlib
import json
import sys

FIELDS = ("seq", "time", "actor", "action", "subject", "details", "prev_hash")


def main(path, anchors):
    expected, prev = 1, "0" * 64
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            event = json.loads(line)
            body = {k: event[k] for k in FIELDS}
            digest = hashlib.sha256(
                json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            ).hexdigest()
            if event["seq"] != expected or event["prev_hash"] != prev or digest != event["hash"]:
                return fail(expected, "missing, reordered or altered event")
            if anchors.pop(expected, event["hash"]) != event["hash"]:
                return fail(expected, "differs from the published anchor")
            prev, expected = event["hash"], expected + 1
    if anchors:
        return fail(min(anchors), "anchored event is gone (log truncated)")
    print(f"intact: {expected - 1} events, head {expected - 1}:{prev}")
    return 0


def fail(seq, why):
    print(f"broken at seq {seq}: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pins = {int(s): h for s, _, h in (a.partition(":") for a in sys.argv[2:])}
    sys.exit(main(sys.argv[1], pins))
