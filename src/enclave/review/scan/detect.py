"""What a file is, by its bytes first and its name second.

A renamed file must not slip through: `weights.txt` holding a safetensors header is a tensor file,
and `results.csv` that starts with `PK` is an archive. Magic numbers decide; the extension only
picks between text formats (notebook, table, JSON, plain text).
"""
from __future__ import annotations

import enum
import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath


class Kind(str, enum.Enum):
    empty = "empty"
    text = "text"
    notebook = "notebook"
    table = "table"  # CSV / TSV (text) or XLSX (binary)
    json = "json"
    image = "image"
    pdf = "pdf"
    archive = "archive"
    tensor = "tensor"
    binary = "binary"


@dataclass(frozen=True)
class Sniffed:
    kind: Kind
    format: str  # e.g. "safetensors", "zip", "csv", "png", "utf-8 text"


def extension(name: str) -> str:
    """Lower-case extension without the dot; "tar.gz" for double extensions of archives."""
    suffixes = [s.lower().lstrip(".") for s in PurePosixPath(name.replace("\\", "/")).suffixes]
    if len(suffixes) >= 2 and suffixes[-2] == "tar" and suffixes[-1] in {"gz", "bz2", "xz"}:
        return "tar." + suffixes[-1]
    return suffixes[-1] if suffixes else ""


TABLE_EXTENSIONS = {"csv", "tsv"}
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)
_PICKLE_PROTOCOLS = {2, 3, 4, 5}


def sniff(name: str, data: bytes) -> Sniffed:
    if not data:
        return Sniffed(Kind.empty, "empty")
    head = data[:512]
    tensor = tensor_format(data)
    if tensor:
        return Sniffed(Kind.tensor, tensor)
    if head.startswith(b"%PDF-"):
        return Sniffed(Kind.pdf, "pdf")
    for magic, fmt in _IMAGE_MAGIC:
        if head.startswith(magic):
            return Sniffed(Kind.image, fmt)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed(Kind.image, "webp")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return Sniffed(Kind.table, "xlsx") if _is_xlsx(data) else Sniffed(Kind.archive, "zip")
    if head.startswith(b"\x1f\x8b"):
        return Sniffed(Kind.archive, "gzip")
    if head.startswith(b"BZh"):
        return Sniffed(Kind.archive, "bzip2")
    if head.startswith(b"\xfd7zXZ\x00"):
        return Sniffed(Kind.archive, "xz")
    if len(data) >= 262 and data[257:262] == b"ustar":
        return Sniffed(Kind.archive, "tar")
    if head.startswith((b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07")):
        return Sniffed(Kind.binary, "7z/rar archive (not supported)")
    if not looks_like_text(data):
        return Sniffed(Kind.binary, "binary")
    ext = extension(name)
    stripped = data.lstrip()[:1]
    if ext == "ipynb" or (stripped == b"{" and b'"nbformat"' in data[:4096] and b'"cells"' in data):
        return Sniffed(Kind.notebook, "ipynb")
    if ext in TABLE_EXTENSIONS:
        return Sniffed(Kind.table, ext)
    if ext == "json" or (stripped in (b"{", b"[") and ext in {"", "txt"}):
        return Sniffed(Kind.json, "json")
    if ext == "svg" or b"<svg" in head:
        return Sniffed(Kind.image, "svg")
    return Sniffed(Kind.text, "text")


def looks_like_text(data: bytes) -> bool:
    """No NUL bytes and few control characters in the first 64 KB (UTF-16 with a BOM counts)."""
    sample = data[:65536]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if b"\x00" in sample:
        return False
    controls = sum(sample.count(bytes([c])) for c in range(1, 32) if c not in (9, 10, 12, 13, 27))
    return controls <= max(4, len(sample) // 100)


def tensor_format(data: bytes) -> str | None:
    """The tensor container format of `data`, by magic bytes, or None."""
    head = data[:64]
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head[:4] in (b"ggml", b"ggjt", b"ggmf", b"lmgg", b"tjgg", b"fmgg"):
        return "ggml"
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    if _is_safetensors(data):
        return "safetensors"
    if _is_onnx(data):
        return "onnx"
    if head.startswith(b"PK\x03\x04"):
        names = _zip_names(data)
        if any(n.endswith("data.pkl") for n in names):
            return "pytorch checkpoint (zip)"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if "model.weights.h5" in names or "variables/variables.index" in names:
            return "keras/tensorflow model"
    return None


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    if not 2 <= header_len <= min(len(data) - 8, 100_000_000):
        return False
    if data[8:9] != b"{":
        return False
    try:
        header = json.loads(data[8:8 + header_len])
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and any(
        isinstance(v, dict) and "dtype" in v and "shape" in v for v in header.values())


def _is_onnx(data: bytes) -> bool:
    """ONNX is a protobuf ModelProto: field 1 (ir_version, varint) then producer/graph/opset fields.
    Protobuf has no magic number, so require that shape and the words ONNX files always carry."""
    if len(data) < 16 or data[0] != 0x08 or data[1] > 0x20:
        return False
    if data[2] not in (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42):
        return False
    window = data[:1 << 20]
    return looks_like_text(data) is False and (b"onnx" in window.lower() or b"ai.onnx" in window
                                               or b"pytorch" in window or b"tf2onnx" in window)


def _zip_names(data: bytes) -> list[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.namelist()[:10000]
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return []


def _is_xlsx(data: bytes) -> bool:
    names = _zip_names(data)
    return "[Content_Types].xml" in names and any(n.startswith("xl/worksheets/") for n in names)
