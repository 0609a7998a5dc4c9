"""Activation dumps: the internals tier's answers (float16 arrays at TransformerLens hook points,
`POST /v1/activations`) written out in bulk. Enough pairs of a layer's input and output
activations recover its weights by regression (one d_model x d_mlp matrix needs about d_model
pairs), so a dump may not leave; a scholar's summary statistics of activations (a norm per
layer, a mean direction) may, with the reviewer shown them.

An array counts as activations when its shape is one a hook of a model in the scan context
returns (`hook_shape`): [..., d_model] (the residual stream, attention and MLP outputs),
[..., d_mlp] (inside the MLP), [..., heads, d_head] (q, k, v, z), [..., heads, positions,
positions] with positions up to the context length (attention scores and patterns), or
[d_model or d_mlp, positions] (one of those transposed); or whatever its shape, when it is
stored under a TransformerLens hook name (`blocks.3.hook_resid_post`, `hook_embed`, ...). Arrays
are read from npy, npz and safetensors headers (never their data), from JSON (nested number lists,
and the gateway's own `{"shape", "data"}` answers), from tables (their numeric columns) and from
text (blocks of lines with a model width of decimal numbers each, or every decimal number of a
text that names hooks, when there are more than a few). Pickles and PyTorch checkpoints cannot be
read safely: one that names hooks counts its payload as float16 numbers. The weight_files check
blocks every tensor file anyway; this one says when it holds activations.

Not recognised: activations in a long table (a row per layer, position, dimension and value)
without hook names, or flattened into one run of numbers with no rows.

The numbers of every item of an export add up (`Env.activation_numbers`), so a dump split over many
small files is judged on its sum: past `activations.max_numbers` it is a dump.
"""
from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item
from enclave.review.scan.model_dims import ModelDims
from enclave.review.scan.numbers import digit_count

NAME = "activations"
# TransformerLens's hook names for GPT-2 (`enclave.gateway.hooks`), as a key, a column or a word.
HOOK_NAME = re.compile(
    r"(?<![\w.])(?:blocks\.\d+\.(?:(?:attn|mlp|ln1|ln2)\.)?hook_[a-z_]+|hook_(?:pos_)?embed"
    r"|ln_final\.hook_(?:scale|normalized))(?![\w])")
# Decimal numbers only: activations are never whole numbers, counts and ids are.
DECIMAL = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")
FLOAT16_BYTES = 2  # what the gateway returns; a pickle's payload is counted in these
MAX_JSON_NODES = 1_000_000  # JSON values walked per item; a bigger document is counted as far as this
MAX_PICKLE_BYTES = 64 << 20  # of a checkpoint's data.pkl searched for hook names
MAX_LISTED = 20  # arrays described in a finding's evidence
# A text that names hooks counts its decimal numbers only from this many: a notebook's code cell
# that asks for `blocks.0.hook_resid_pre` with a learning rate of 0.001 is not a dump.
MIN_NAMED_TEXT_NUMBERS = 32


@dataclass(frozen=True)
class Found:
    """Numbers in an item that count as activations, and why."""

    where: str
    shape: tuple[int, ...] | None  # None: not known (a pickle's payload, a text's numbers)
    numbers: int
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "shape": list(self.shape) if self.shape is not None else None,
                "numbers": self.numbers, "why": self.why}


def hook_shape(shape: tuple[int, ...], models: list[ModelDims]) -> str | None:
    """Which hook of which model returns arrays of this shape (with any leading axes), or None."""
    if not shape or 0 in shape:
        return None
    for d in models:
        model = Path(d.model).name or d.model
        if len(shape) >= 2 and shape[-2:] == (d.n_heads, d.d_head):
            return f"[positions, heads, d_head] of {model!r} (attention q, k, v or z)"
        if len(shape) >= 3 and shape[-3] == d.n_heads and shape[-2] <= shape[-1] <= d.n_ctx:
            return f"[heads, positions, positions] of {model!r} (attention scores or pattern)"
        if shape[-1] == d.d_model:
            return f"[positions, d_model={d.d_model}] of {model!r} (residual stream, attention or MLP output)"
        if shape[-1] == d.d_mlp:
            return f"[positions, d_mlp={d.d_mlp}] of {model!r} (inside the MLP)"
        if len(shape) == 2 and shape[0] in (d.d_model, d.d_mlp) and shape[1] <= d.n_ctx:
            return f"[d_model or d_mlp, positions] of {model!r} (activations transposed)"
    return None


def _array(where: str, shape: tuple[int, ...], decimal: bool, named: bool, models: list[ModelDims]) -> Found | None:
    role = hook_shape(shape, models) if decimal else None
    if role is None and not named:
        return None
    why = role or "stored under a TransformerLens hook name"
    return Found(where, shape, math.prod(shape), why)


# ----- tensor files: headers only ------------------------------------------------------------------

def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype] | None:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
    except (ValueError, OSError, SyntaxError, EOFError):
        return None
    return tuple(int(n) for n in shape), dtype


def _from_tensor_file(item: Item, models: list[ModelDims], max_members: int) -> list[Found]:
    fmt = item.sniffed.format
    out: list[Found] = []
    if fmt == "npy":
        header = _npy_header(io.BytesIO(item.data))
        if header is not None:
            found = _array("the array", header[0], header[1].kind == "f", False, models)
            out += [found] if found else []
    elif fmt == "npz":
        try:
            with zipfile.ZipFile(io.BytesIO(item.data)) as archive:
                for info in archive.infolist()[:max_members]:
                    with archive.open(info) as member:
                        header = _npy_header(member)
                    if header is not None:
                        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                        found = _array(f"array {key!r}", header[0], header[1].kind == "f",
                                       bool(HOOK_NAME.search(key)), models)
                        out += [found] if found else []
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            pass
    elif fmt == "safetensors":
        (length,) = struct.unpack("<Q", item.data[:8])
        header = json.loads(item.data[8:8 + length])
        for key, meta in header.items():
            if key == "__metadata__" or not isinstance(meta, dict) or not isinstance(meta.get("shape"), list):
                continue
            shape = tuple(int(n) for n in meta["shape"])
            found = _array(f"tensor {key!r}", shape, str(meta.get("dtype", "")).upper().startswith(("F", "BF")),
                           bool(HOOK_NAME.search(key)), models)
            out += [found] if found else []
    elif fmt in ("pickle", "pytorch checkpoint (zip)"):
        out += _from_pickle(item, fmt)
    return out


def _from_pickle(item: Item, fmt: str) -> list[Found]:
    """Pickles are never unpickled here (that runs code): the hook names a state dict or a cache
    pickles are plain strings in its bytes, and its payload is counted as float16 numbers."""
    if fmt == "pickle":
        pickled, payload = item.data, len(item.data)
    else:
        try:
            with zipfile.ZipFile(io.BytesIO(item.data)) as archive:
                infos = archive.infolist()
                pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
                pickled = archive.read(pkl) if pkl is not None and pkl.file_size <= MAX_PICKLE_BYTES else b""
                payload = sum(i.file_size for i in infos if "/data/" in i.filename)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return []
    names = sorted(set(HOOK_NAME.findall(pickled.decode("latin-1"))))
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [Found(f"a {fmt} naming {shown}", None, payload // FLOAT16_BYTES,
                  f"a {fmt} naming TransformerLens hooks (payload counted as float16)")]


# ----- JSON --------------------------------------------------------------------------------------

def _from_json(value: Any, models: list[ModelDims]) -> list[Found]:
    out: list[Found] = []
    walked = 0
    stack: list[tuple[Any, str, bool]] = [(value, "", False)]
    while stack and walked < MAX_JSON_NODES:
        node, path, named = stack.pop()
        walked += 1
        where = path or "the document"
        if isinstance(node, dict):
            shape, data = node.get("shape"), node.get("data")
            if isinstance(shape, list) and shape and all(isinstance(n, int) and n >= 0 for n in shape) \
                    and isinstance(data, str):
                # The gateway's own answer: {"shape": [...], "dtype": "float16", "data": "<base64>"}.
                found = _array(where, tuple(shape), True, named, models)
                out += [found] if found else []
                continue
            # Pushed in reverse so that arrays are found in the document's order.
            for key, child in reversed(list(node.items())):
                key = str(key)
                stack.append((child, f"{path}.{key}" if path else key, named or bool(HOOK_NAME.search(key))))
        elif isinstance(node, list) and node:
            array = _numeric(node)
            if array is not None:
                found = _array(where, array.shape, array.dtype.kind == "f", named, models)
                out += [found] if found else []
                continue
            stack.extend((child, f"{path}[{i}]", named) for i, child in reversed(list(enumerate(node))))
    return out


def _numeric(node: list) -> np.ndarray | None:
    """A rectangular list of numbers as an array; None for anything else (ragged, strings, dicts)."""
    first = node[0]
    while isinstance(first, list) and first:
        first = first[0]
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return None
    try:
        array = np.array(node)
    except (ValueError, TypeError):
        return None
    return array if array.dtype.kind in "iuf" else None


# ----- tables and text ---------------------------------------------------------------------------

def _from_tables(item: Item, models: list[ModelDims]) -> list[Found]:
    out: list[Found] = []
    for table in item.tables:
        keys = table.key_columns()
        numeric = [j for j in range(table.width) if j not in keys]
        if not numeric or not table.rows:
            continue
        values = [v for j in numeric for v in table.column(j) if v is not None]
        labels = [str(h) for h in table.header] + [row[j] for row in table.rows for j in keys if j < len(row)]
        named = any(HOOK_NAME.search(label) for label in labels)
        decimal = any(not float(v).is_integer() for v in values[:10_000])
        found = _array(table.label or "the table", (len(table.rows), len(numeric)), decimal, named, models)
        if found is not None:
            out.append(Found(found.where, found.shape, len(values), found.why))
    return out


def _from_text(item: Item, models: list[ModelDims], skip: set[str]) -> list[Found]:
    widths = {w for d in models for w in (d.d_model, d.d_mlp)}
    out: list[Found] = []
    for segment in item.segments:
        if segment.label in skip or digit_count(segment.text) == 0:
            continue
        label = f"{segment.label}, " if segment.label else ""
        if HOOK_NAME.search(segment.text):
            count = len(DECIMAL.findall(segment.text))
            if count >= MIN_NAMED_TEXT_NUMBERS:
                out.append(Found(f"{label}the whole text", None, count,
                                 "decimal numbers in a text that names TransformerLens hooks"))
            continue
        # Rows written one per line (np.savetxt, a CSV without a header read as text, a log).
        lines = segment.text.split("\n")
        counts = [len(DECIMAL.findall(line)) for line in lines]
        start = 0
        while start < len(counts):
            end = start
            while end < len(counts) and counts[end] == counts[start]:
                end += 1
            if counts[start] in widths:
                found = _array(f"{label}lines {start + 1}-{end}", (end - start, counts[start]), True, False, models)
                out += [found] if found else []
            start = end
    return out


def find_activations(item: Item, env: Env) -> list[Found]:
    """Everything in one item that counts as activations."""
    models = env.model_dims
    if item.kind is Kind.tensor:
        return _from_tensor_file(item, models, env.policy.archives.max_members)
    if item.kind is Kind.json and item.text is not None:
        try:
            return _from_json(json.loads(item.text), models)
        except (ValueError, RecursionError):
            pass  # not JSON after all: read as text below
    found = _from_tables(item, models)
    if item.is_textual:
        found += _from_text(item, models, {t.label for t in item.tables})
    return found


def check(item: Item, env: Env) -> Result:
    result = Result()
    if item.unread:
        return result
    found = find_activations(item, env)
    numbers = sum(f.numbers for f in found)
    if not numbers:
        return result
    policy = env.policy.activations
    before = env.activation_numbers
    env.activation_numbers = total = before + numbers
    first = found[0]
    shape = f" shaped {list(first.shape)}" if first.shape is not None else ""
    what = f"{numbers:,} numbers like a model's activations ({first.where}{shape}: {first.why}" + \
        (f"; and {len(found) - 1} more arrays)" if len(found) > 1 else ")")
    evidence = {"numbers": numbers, "export_total": total, "max_numbers": policy.max_numbers,
                "arrays": [f.to_json() for f in found[:MAX_LISTED]], "arrays_found": len(found)}
    if total > policy.max_numbers:
        earlier = f" ({total:,} with the export's earlier files)" if before else ""
        result.add(NAME, policy.dump_severity, item.name, "whole file",
                   f"activation dump: {what}{earlier}, over the {policy.max_numbers:,} an export may hold; "
                   "enough activations recover weights by regression", **evidence)
    else:
        result.add(NAME, policy.summary_severity, item.name, "whole file",
                   f"{what}, within the {policy.max_numbers:,} an export may hold: check they are summary "
                   "statistics, not a sample of activations", **evidence)
    return result
