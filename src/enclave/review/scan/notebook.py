"""Walking a Jupyter notebook cell by cell, outputs included.

Outputs are where disclosures hide: a printed DataFrame, a traceback quoting a record, an image of
a plot. Each text part becomes its own segment, labelled the way a reviewer finds it in the
notebook ("cell 4", "cell 4 output 1"); images, PDFs and attachments are listed separately, to be
decoded and scanned as files of their own. Cells are numbered from 1 in file order.

Nothing of the file is left out: metadata of the notebook, of each cell and of each output, output
data of any MIME type, fields nbformat does not define ("cell 4 other fields") and the values of
JSON keys given twice (JSON readers, Jupyter's too, keep only the last) are text parts as well.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TEXT_MIME = ("text/plain", "text/markdown", "text/html", "text/latex", "application/javascript")
_IMAGE_MIME_PREFIX = ("image/",)
# Fields walked below; any other key of a cell or an output is reported as "other fields".
_CELL_KEYS = {"cell_type", "source", "metadata", "outputs", "attachments", "execution_count", "id"}
_CELL_TYPES = {"code", "markdown", "raw"}
_OUTPUT_KEYS = {"output_type", "text", "name", "data", "metadata", "execution_count", "ename", "evalue", "traceback"}
_OUTPUT_TYPES = {"stream", "error", "execute_result", "display_data"}
_TOP_KEYS = {"cells", "metadata", "nbformat", "nbformat_minor"}


class NotebookError(ValueError):
    """Not a notebook we can read (bad JSON or not the nbformat shape)."""


@dataclass(frozen=True)
class Part:
    label: str  # "cell 4", "cell 4 output 1", "cell 4 output 1 (text/html)", "notebook metadata"
    text: str


@dataclass(frozen=True)
class Embedded:
    label: str  # "cell 2 output 1 (image/png)", "cell 3 attachment rows.csv"
    mime: str
    data: str  # as stored: base64


@dataclass(frozen=True)
class Walked:
    parts: list[Part]
    embedded: list[Embedded]


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return "" if value is None else str(value)


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _other(parts: list[Part], label: str, fields: dict) -> None:
    if fields:
        parts.append(Part(f"{label} other fields", _dumps(fields)))


def _attachments(value, label: str, parts: list[Part], embedded: list[Embedded]) -> None:
    if not isinstance(value, dict):
        _other(parts, label, {"attachments": value})
        return
    for name, attachment in value.items():
        if not isinstance(attachment, dict):
            _other(parts, f"{label} attachment {name}", {"attachment": attachment})
            continue
        for mime, data in attachment.items():
            embedded.append(Embedded(f"{label} attachment {name}" + (f" ({mime})" if len(attachment) > 1 else ""),
                                     mime, _text(data)))


def _output(output: dict, out_label: str, parts: list[Part], embedded: list[Embedded]) -> None:
    kind = output.get("output_type")
    other = {k: v for k, v in output.items() if k not in _OUTPUT_KEYS}
    if kind not in _OUTPUT_TYPES:
        other["output_type"] = kind
    if kind == "stream":
        parts.append(Part(out_label, _ANSI.sub("", _text(output.get("text")))))
        if output.get("name") not in ("stdout", "stderr"):
            other["name"] = output.get("name")
    elif kind == "error":
        trace = "\n".join(_text(line) for line in output.get("traceback") or [])
        parts.append(Part(out_label, _ANSI.sub("", f"{output.get('ename', '')}: {output.get('evalue', '')}\n{trace}")))
    data = output.get("data") or {}
    if not isinstance(data, dict):
        other["data"] = data
        data = {}
    binary = {m for m in data if m.startswith(_IMAGE_MIME_PREFIX) and m != "image/svg+xml" or m == "application/pdf"}
    text_mimes = [m for m in data if m not in binary]
    for mime in text_mimes:
        value = data[mime]
        body = _dumps(value) if isinstance(value, (dict, list)) else _text(value)
        suffix = "" if mime == "text/plain" or len(text_mimes) == 1 else f" ({mime})"
        parts.append(Part(out_label + suffix, body))
    for mime in data:
        if mime in binary:
            embedded.append(Embedded(f"{out_label} ({mime})", mime, _text(data[mime])))
    if output.get("metadata"):
        parts.append(Part(f"{out_label} metadata", _dumps(output["metadata"])))
    for key in ("execution_count",):
        if key in output and not isinstance(output[key], (int, type(None))):
            other[key] = output[key]
    _other(parts, out_label, other)


def walk(text: str) -> Walked:
    duplicates: list[tuple[str, object]] = []

    def pairs(items):
        seen: dict = {}
        for key, value in items:
            if key in seen:
                duplicates.append((key, seen[key]))
            seen[key] = value
        return seen

    try:
        nb = json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:
        raise NotebookError(f"not valid JSON ({getattr(exc, 'msg', exc)} at line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError("no list of cells")
    parts: list[Part] = []
    embedded: list[Embedded] = []
    for number, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict):
            raise NotebookError(f"cell {number} is not an object")
        label = f"cell {number}"
        source = _text(cell.get("source"))
        if source:
            parts.append(Part(label, source))
        other = {k: v for k, v in cell.items() if k not in _CELL_KEYS}
        if cell.get("cell_type") not in _CELL_TYPES:
            other["cell_type"] = cell.get("cell_type")
        if not isinstance(cell.get("execution_count"), (int, type(None))):
            other["execution_count"] = cell.get("execution_count")
        if not isinstance(cell.get("id", ""), str) or len(cell.get("id", "")) > 64:
            other["id"] = cell.get("id")
        if cell.get("metadata"):
            parts.append(Part(f"{label} metadata", _dumps(cell["metadata"])))
        if "attachments" in cell and cell["attachments"]:
            _attachments(cell["attachments"], label, parts, embedded)
        outputs = cell.get("outputs") or []
        if not isinstance(outputs, list):
            other["outputs"] = outputs
            outputs = []
        for out_number, output in enumerate(outputs, start=1):
            if not isinstance(output, dict):
                _other(parts, f"{label} output {out_number}", {"output": output})
                continue
            _output(output, f"{label} output {out_number}", parts, embedded)
        _other(parts, label, other)
    # Metadata (widget state, tags) can carry data too.
    metadata = nb.get("metadata")
    if metadata:
        parts.append(Part("notebook metadata", _dumps(metadata)))
    other = {k: v for k, v in nb.items() if k not in _TOP_KEYS}
    for key in ("nbformat", "nbformat_minor"):
        if key in nb and not isinstance(nb[key], int):
            other[key] = nb[key]
    if other:
        parts.append(Part("notebook other fields", _dumps(other)))
    if duplicates:
        parts.append(Part("values of duplicated JSON keys", "\n".join(f"{k}: {_dumps(v)}" for k, v in duplicates)))
    return Walked(parts, embedded)
