"""File policy, archives, weights files and bad input: what must fire and what must not."""
from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import tarfile
import zipfile

import numpy as np

from enclave.review.scan import ExportFile, ScanContext, scan_files
from tests.review_corpus import (
    POLICY, code_cell, notebook, of, result, review_home, scan, stream, tar_bytes, zip_bytes,  # noqa: F401 (fixture)
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# ----- file policy ------------------------------------------------------------------------------

def test_clean_text_and_table_pass():
    report = scan({"notes/summary.md": "# Results\n\nIncome rises with education.\n",
                   "results/table.csv": "group,n,mean_income\nnurses,152,61000.5\nteachers,240,52000.0\n"})
    assert report.verdict.value == "pass", report.findings


def test_disallowed_extension_blocks_and_allowed_does_not():
    report = scan({"tool.exe": "MZ text pretending", "readme.txt": "hello"})
    [f] = of(report, "file_policy", "block")
    assert f.file == "tool.exe" and ".exe" in f.message


def test_images_and_pdfs_need_human_eyes():
    report = scan({"plot.png": PNG, "paper.pdf": b"%PDF-1.7\n...", "fig.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>"})
    warned = {f.file for f in of(report, "file_policy", "warn")}
    assert warned == {"plot.png", "paper.pdf", "fig.svg"}
    assert report.verdict.value == "review"


def test_notebook_scanned_cell_by_cell_with_outputs_and_images():
    nb = notebook(
        code_cell("print('hello')", stream("hello\n")),
        code_cell("df", result({"text/plain": "all fine", "image/png": base64.b64encode(PNG).decode()})),
        code_cell("x = 1", stream("contact: jane.roe@example.org\n")),
    )
    report = scan({"analysis.ipynb": nb})
    [email] = of(report, "identifiers")
    assert email.location.startswith("cell 3 output 1, line 1")
    # The image output is decoded and scanned as a file of its own (a PNG: for human eyes).
    [image] = of(report, "file_policy", "warn")
    assert image.file == "analysis.ipynb!cell 2 output 1 (image/png)" and "an image (png)" in image.message


def test_broken_notebook_is_scanned_as_text():
    report = scan({"broken.ipynb": '{"cells": [ oops, SSN 536-22-8471'})
    assert any("not a readable notebook" in f.message for f in of(report, "file_policy"))
    assert of(report, "identifiers", "block")


def test_content_that_contradicts_its_extension_is_scanned_as_what_it_is():
    report = scan({"results.csv": zip_bytes({"inner.txt": "SSN 536-22-8471"})})
    assert any("not what the .csv extension says" in f.message for f in of(report, "file_policy", "warn"))
    [ssn] = of(report, "identifiers", "block")
    assert ssn.file == "results.csv!inner.txt"


def test_empty_file_is_info_only():
    report = scan({"empty.txt": b""})
    [f] = report.findings
    assert (f.check, f.severity.value, f.message) == ("file_policy", "info", "empty file")
    assert report.verdict.value == "pass"


def test_invalid_utf8_is_flagged_and_still_scanned():
    report = scan({"notes.txt": b"caf\xe9 \xff\xfe then SSN 536-22-8471"})
    [bad] = [f for f in of(report, "file_policy", "warn") if "UTF-8" in f.message]
    assert bad.location == "byte 3"
    assert of(report, "identifiers", "block")


def test_unknown_binary_blocks():
    report = scan({"data.txt": bytes(range(256)) * 4})
    assert any("no known format" in f.message for f in of(report, "file_policy", "block"))


def test_a_1gb_file_is_refused_by_its_size_unread(tmp_path):
    big = tmp_path / "huge.csv"
    with big.open("wb") as handle:  # sparse: no gigabyte is written or read
        handle.truncate(1 << 30)
    exported = ExportFile.from_path(big, "huge.csv", POLICY.files.max_file_bytes)
    assert exported.data == b"" and exported.size == 1 << 30
    report = scan_files([exported], POLICY, ScanContext())
    [f] = of(report, "file_policy", "block")
    assert "1.0 GB" in f.message and "not read" in f.message
    assert report.files[0].sha256 is None


def test_too_many_table_rows_looks_like_microdata():
    rows = "\n".join(f"{i},{20 + i % 50}" for i in range(POLICY.files.max_table_rows + 5))
    report = scan({"rows.csv": "id,age\n" + rows})
    assert any("row-level data" in f.message for f in of(report, "file_policy", "warn"))


# ----- archives -----------------------------------------------------------------------------

def test_zip_members_are_scanned_with_nested_names():
    inner = zip_bytes({"deep/ssn.txt": "SSN 536-22-8471"})
    outer = zip_bytes({"inner.zip": inner, "ok.txt": "fine"})
    report = scan({"export.zip": outer})
    [f] = of(report, "identifiers", "block")
    assert f.file == "export.zip!inner.zip!deep/ssn.txt"
    assert "export.zip!ok.txt" in {s.name for s in report.files}


def test_tgz_and_gz_members_are_scanned():
    report = scan({"bundle.tgz": tar_bytes({"a/b.csv": "group,n\nx,3\n"}),
                   "note.txt.gz": gzip.compress(b"mail me: a.b@example.org")})
    assert [f.file for f in of(report, "tables", "block")] == ["bundle.tgz!a/b.csv"]
    assert [f.file for f in of(report, "identifiers", "block")] == ["note.txt.gz!note.txt"]


def test_zip_bomb_is_refused_without_expanding_it():
    bomb = zip_bytes({"zeros.bin": b"\0" * (8 << 20)})
    assert len(bomb) < 20_000
    report = scan({"bomb.zip": bomb})
    [f] = of(report, "archive", "block")
    assert "compression ratio" in f.message
    # Nothing was extracted: only the member names were read, and the bomb's bytes are unexamined.
    assert [s.name for s in report.files] == ["bomb.zip", "bomb.zip!(member names)"]
    [top] = report.coverage
    # all but the records: end of central directory (22), one central (46) and one local header (30)
    assert top.unexamined == len(bomb) - 22 - 46 - 30 - 2 * len("zeros.bin") and top.human == 0


def test_gzip_bomb_is_stopped_at_the_limit():
    bomb = gzip.compress(b"\0" * (40 << 20))
    report = scan({"zeros.gz": bomb})
    assert any("expands to more than" in f.message for f in of(report, "archive", "block"))


def test_nested_archives_stop_at_the_depth_limit():
    blob = zip_bytes({"x.txt": "deepest"})
    for level in range(POLICY.archives.max_depth + 1):
        blob = zip_bytes({f"level{level}.zip": blob})
    report = scan({"russian-doll.zip": blob})
    assert any("nested" in f.message for f in of(report, "archive", "block"))


def test_path_traversal_links_and_devices_are_not_extracted():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/cron.d/evil", "x")
        archive.writestr("/abs/path.txt", "x")
        link = zipfile.ZipInfo("link-to-secret")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/shadow")
        archive.writestr("fine.txt", "fine")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for name, kind in (("sym", tarfile.SYMTYPE), ("hard", tarfile.LNKTYPE), ("dev", tarfile.CHRTYPE), ("fifo", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    report = scan({"evil.zip": buffer.getvalue(), "evil.tar": tar.getvalue()})
    messages = [f.message for f in of(report, "archive", "block")]
    assert sum("path traversal" in m for m in messages) == 1
    assert sum("absolute path" in m for m in messages) == 1
    assert sum("symbolic link" in m for m in messages) == 2
    assert sum("hard link" in m for m in messages) == 1
    assert sum("special file" in m for m in messages) == 2
    assert {s.name for s in report.files} >= {"evil.zip!fine.txt"}
    assert not any(".." in s.name for s in report.files)


def test_corrupt_and_truncated_archives_are_findings_not_crashes():
    good = zip_bytes({"a.txt": "hello " * 1000})
    report = scan({"cut.zip": good[: len(good) // 2], "junk.zip": b"PK\x03\x04" + b"junk" * 10,
                   "cut.tgz": tar_bytes({"a.txt": "x" * 5000})[:40]})
    blocked = {f.file for f in of(report, "archive", "block")}
    assert blocked == {"cut.zip", "junk.zip", "cut.tgz"}


def test_encrypted_zip_member_cannot_be_inspected():
    data = bytearray(zip_bytes({"secret.txt": "x"}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" flag bit in both the local and the central header.
    data[6] |= 1
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 1
    report = scan({"locked.zip": bytes(data)})
    assert any("encrypted" in f.message for f in of(report, "archive", "block"))


# ----- weights files ----------------------------------------------------------------------------

def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + np.arange(4, dtype=np.float32).tobytes()


def test_tensor_formats_are_blocked_by_magic_bytes_whatever_the_name():
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    npz = io.BytesIO()
    np.savez(npz, a=np.zeros(3))
    files = {
        "weights.txt": _safetensors(),  # renamed safetensors
        "model.pt": b"\x80\x04\x95" + b"\x00" * 20,  # pickle
        "vec.csv": npy.getvalue(),
        "arrays.zip": npz.getvalue(),
        "model.h5": b"\x89HDF\r\n\x1a\n" + b"\x00" * 32,
        "model.gguf": b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 32,
        "ckpt.zip": zip_bytes({"archive/data.pkl": b"\x80\x02}q\x00.", "archive/data/0": b"\x00" * 16}),
    }
    report = scan(files)
    assert {f.file for f in of(report, "weight_files", "block")} == set(files)


def test_torch_checkpoint_written_by_torch_is_blocked(tmp_path):
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4, 4)}, buffer)
    report = scan({"results.bin": buffer.getvalue()})
    [f] = of(report, "weight_files", "block")
    assert "pytorch" in f.message.lower()


def test_base64_of_a_weights_file_is_decoded_and_blocked():
    text = "here is a harmless blob:\n" + base64.b64encode(_safetensors() * 3).decode() + "\n"
    report = scan({"notes.txt": text})
    [f] = of(report, "weight_files", "block")
    assert f.file.startswith("notes.txt!base64@line 2")


def test_text_that_merely_mentions_formats_is_not_a_weights_file():
    report = scan({"readme.md": "We saved model.safetensors and GGUF files, pickled with protocol 4."})
    assert not of(report, "weight_files")
