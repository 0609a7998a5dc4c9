"""Encoded and random-looking blobs: base64 and hex runs are decoded and scanned again; what
decodes to nothing recognisable is shown to a person (or, if it holds float32/float16 values,
compared with the enclave's model weights); long high-entropy runs are flagged."""
from __future__ import annotations

import numpy as np

from enclave.review.scan import blobs
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind, sniff
from enclave.review.scan.items import Item

NAME = "encoded_blobs"


def _as_floats(data: bytes) -> list[tuple[str, np.ndarray]]:
    out = []
    for dtype, size in (("<f4", 4), ("<f2", 2)):
        if len(data) % size == 0:
            values = np.frombuffer(data, dtype=dtype).astype(np.float64)
            finite = values[np.isfinite(values)]
            if finite.shape[0] >= 0.99 * values.shape[0] and finite.shape[0] and np.abs(finite).max() < 1e6:
                out.append((dtype, finite))
    return out


def _textual(data: bytes) -> bool:
    """Decoded bytes that are text: UTF-8, or mostly printable ASCII (Latin-1 text). Not merely free
    of NUL bytes: a URL's path (".../2006/relationships/officeDocument") is valid base64 that decodes
    to high-bit noise, not text."""
    if blobs.looks_like_text(data):
        return True
    sample = data[:4096]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    return bool(sample) and printable >= 0.9 * len(sample)


def check(item: Item, env: Env) -> Result:
    result = Result()
    policy = env.policy.blobs
    if item.unread or not item.segments:
        return result
    for segment in item.segments:
        found = blobs.find_blobs(segment.text, policy.min_base64_chars, policy.min_hex_chars, policy.max_blobs_per_file,
                                 segment.codes)
        decoded_spans = [(b.start, b.end) for b in found]
        for blob in found:
            where = segment.where(blob.start, blob.end)
            kind = sniff("", blob.data).kind
            recognised = kind not in (Kind.binary, Kind.empty, Kind.text) or _textual(blob.data)
            if recognised:
                if item.decode_depth >= policy.max_decode_depth:
                    result.add(NAME, policy.opaque_blob_severity, item.name, where,
                               f"{blob.encoding} blob nested more than {policy.max_decode_depth} encodings deep; not decoded",
                               **segment.evidence(blob.start, blob.end, encoding=blob.encoding))
                    continue
                line, _ = segment.line_of(blob.start)
                label = f"{segment.label} line {line}" if segment.label else f"line {line}"
                result.children.append(item.child(f"{blob.encoding}@{label}", blob.data, origin="decoded"))
                continue
            if len(blob.data) < policy.min_opaque_bytes:
                continue  # hashes, keys, ids: too small to carry data worth smuggling
            matched = False
            if env.context.model_dirs and env.fingerprints:
                w = env.policy.weights
                for dtype, values in _as_floats(blob.data):
                    for fp in env.fingerprints:
                        for m in fp.match(values, min_length=w.min_vector_length, min_cosine=w.min_cosine,
                                          max_candidates=w.max_candidates_per_vector):
                            matched = True
                            result.add("weight_vectors", w.weight_vector_severity, item.name, where,
                                       f"{blob.encoding} blob holds {dtype} values equal to {m.axis} {m.index} of "
                                       f"{m.tensor} up to scale {m.scale:.4g} (|cosine| {m.cosine:.4f})",
                                       **segment.evidence(blob.start, blob.end, tensor=m.tensor, axis=m.axis, index=m.index))
                            break
            if not matched:
                result.add(NAME, policy.opaque_blob_severity, item.name, where,
                           f"{blob.encoding} blob of {len(blob.data):,} bytes decodes to no known format",
                           **segment.evidence(blob.start, blob.end, encoding=blob.encoding, bytes=len(blob.data)))
        for start, end, bits in blobs.high_entropy_runs(segment.text, policy.entropy_min_chars, policy.max_entropy_bits,
                                                        decoded_spans, segment.codes):
            result.add(NAME, policy.high_entropy_severity, item.name, segment.where(start, end),
                       f"{end - start:,} characters at {bits:.2f} bits per character look encrypted or compressed",
                       **segment.evidence(start, end, bits=round(bits, 3)))
    return result
