"""Containers that are not archives: PNG, JPEG and GIF images, PDFs and the attachments and images
inside notebooks, opened down to their last byte (see `coverage`).

What a viewer does not show comes back as parts, scanned like any file: a PNG's text chunks and
whatever follows its IEND, a JPEG's comments and application segments, a GIF's comments and
extensions, a PDF's attached files, the objects an incremental update replaced and
its other text, a notebook's attachments and image outputs (decoded from base64). Pixels, fonts
and rendered pages are for the reviewer's eyes; the file policy asks for them.
"""
from __future__ import annotations

import base64
import binascii

from enclave.review.scan import pdf, pictures, png
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.coverage import CHECKED, INSIDE, UNEXAMINED, Part, Region
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item

NAME = "containers"


def _embedded(item: Item) -> tuple[list[Part], list[Region]]:
    parts = []
    inside = 0
    for embedded in item.embedded:
        raw = embedded.data.encode("utf-8")
        try:
            data = base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            data = raw  # not base64 after all: the text itself
        parts.append(Part(embedded.label, data, 0, len(raw)))
        inside += len(raw)
    regions = [Region("notebook text", max(0, len(item.data) - inside), CHECKED)]
    if inside:
        regions.append(Region("attachments and image outputs", inside, INSIDE))
    return parts, regions


def check(item: Item, env: Env) -> Result:
    result = Result()
    if item.unread:
        return result
    limit = min(env.policy.archives.max_member_bytes, env.expansion.remaining)
    if item.kind is Kind.image and item.sniffed.format == "png":
        parts, regions = png.dissect(item.data, limit)
        wrap = True
    elif item.kind is Kind.image and item.sniffed.format in ("jpeg", "gif"):
        parts, regions = (pictures.jpeg if item.sniffed.format == "jpeg" else pictures.gif)(item.data)
        wrap = True
    elif item.kind is Kind.pdf:
        parts, regions = pdf.dissect(item.data, limit)
        wrap = True
    elif item.kind is Kind.notebook and item.notebook_error is None and item.text is not None:
        parts, regions = _embedded(item)
        wrap = False
    else:
        return result
    policy = env.policy.archives
    for part in parts:
        if item.depth >= policy.max_depth:
            result.add(NAME, policy.unsafe_member_severity, item.name, part.label,
                       f"unexamined bytes in {item.name}: {part.label} ({part.size:,} bytes); nested more than "
                       f"{policy.max_depth} containers deep, not opened", bytes=part.size)
            regions.append(Region(part.label, len(part.data), UNEXAMINED))
            continue
        if not env.expansion.take(len(part.data)):
            result.add(NAME, policy.unsafe_member_severity, item.name, part.label,
                       f"unexamined bytes in {item.name}: {part.label} ({part.size:,} bytes); the export's "
                       "expansion budget is used up", bytes=part.size)
            regions.append(Region(part.label, len(part.data), UNEXAMINED))
            continue
        result.children.append(item.child(f"({part.label})" if wrap else part.label, part.data, origin="part"))
    result.regions.extend(regions)
    return result
