"""No unexamined bytes (issue 11, item 2): every byte of a container format is either read by a
check or left, visibly, to a reviewer.

Each attack hides rows of a protected dataset where a container keeps bytes that no viewer shows
and no check used to read: extra parts of a workbook, zip comments and extra fields, data after
an archive's end, gzip header fields and a second gzip member, PNG text chunks and data after
IEND, a PDF's embedded file and the revision an incremental update replaced, a notebook's
attachments and metadata. Each must now be found by the same record-linkage check that finds the
rows in a plain text file; bytes no check can read are a block finding that names where they are.
"""
from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import json
import struct
import zipfile
import zlib

import pytest

from enclave.review.scan.context import ProtectedSource
from tests.review_corpus import POLICY, code_cell, notebook, of, people, people_csv, result, review_home, scan, zip_bytes  # noqa: F401 (fixture)

NOISE = bytes((i * 73 + 41) % 256 for i in range(600))  # no known format, not text


@pytest.fixture
def protected(tmp_path):
    return [ProtectedSource.from_path(people_csv(tmp_path, columns=["name", "dob", "sex", "zip"]))]


def rows(first: int = 10, n: int = 4) -> str:
    return "".join(f"{p.name},{p.dob},{p.sex},{p.zip}\n" for p in people()[first:first + n])


def linked_files(report) -> set[str]:
    return {f.file for f in of(report, "record_linkage", "block")}


def unexamined(report) -> list:
    return [f for f in report.findings if f.message.startswith("unexamined bytes in ")]


def assert_only_under(report, top: str) -> None:
    files = linked_files(report)
    assert files and all(f.startswith(top + "!") for f in files), files


# ----- zip and OOXML ---------------------------------------------------------------------------------

def workbook(extra: dict[str, str] | None = None) -> bytes:
    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame({"group": ["a", "b"], "count": [40, 50]}).to_excel(buffer, index=False, sheet_name="Results")
    if not extra:
        return buffer.getvalue()
    with zipfile.ZipFile(buffer, "a") as book:
        for name, text in extra.items():
            book.writestr(name, text)
    return buffer.getvalue()


def test_a_clean_workbook_passes_and_every_part_is_read():
    report = scan({"t.xlsx": workbook()})
    assert report.verdict.value == "pass", report.findings
    parts = {s.name for s in report.files}
    assert "t.xlsx!xl/worksheets/sheet1.xml" in parts and "t.xlsx!docProps/core.xml" in parts
    [top] = [c for c in report.coverage if c.name == "t.xlsx"]
    assert top.unexamined == 0 and top.human == 0 and top.checked > 0


def test_extra_part_inside_a_workbook(protected):
    report = scan({"t.xlsx": workbook({"customXml/item9.xml": f"<rows>{rows()}</rows>"})}, protected=protected)
    assert "t.xlsx!customXml/item9.xml" in linked_files(report)


def test_zip_comment(protected):
    buffer = io.BytesIO(zip_bytes({"ok.txt": "fine"}))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.comment = rows().encode()
    report = scan({"r.zip": buffer.getvalue()}, protected=protected)
    assert linked_files(report) == {"r.zip!(zip comment)"}


def test_member_comment_and_member_name(protected):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("ok.txt")
        info.comment = rows(20).encode()
        archive.writestr(info, "fine")
        archive.writestr(rows(30, 2).replace("\n", " ").replace(",", "_") + ".txt", "fine")
    report = scan({"r.zip": buffer.getvalue()}, protected=protected)
    assert {"r.zip!(comment of member ok.txt)", "r.zip!(member names)"} <= linked_files(report)


def _with_extra(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("ok.txt")
        info.extra = struct.pack("<HH", 0xCAFF, len(payload)) + payload
        archive.writestr(info, "fine")
    return buffer.getvalue()


def test_zip_extra_field_text_is_read(protected):
    report = scan({"r.zip": _with_extra(rows().encode())}, protected=protected)
    assert any(f.startswith("r.zip!(extra field of member ok.txt") for f in linked_files(report)), report.findings


def test_zip_extra_field_of_no_known_format_blocks():
    report = scan({"r.zip": _with_extra(NOISE)})
    found = unexamined(report)
    assert found and all(f.severity.value == "block" for f in found)
    assert any("r.zip" in f.message and "extra field of member ok.txt" in f.message and "bytes)" in f.message
               for f in found)
    assert report.verdict.value == "block"


def test_data_after_the_end_of_a_zip(protected):
    report = scan({"r.zip": zip_bytes({"ok.txt": "fine"}) + rows().encode()}, protected=protected)
    assert linked_files(report) == {"r.zip!(data after the end of the archive)"}
    noisy = scan({"r.zip": zip_bytes({"ok.txt": "fine"}) + NOISE})
    [f] = unexamined(noisy)
    assert f.severity.value == "block" and f"({len(NOISE)} bytes)" in f.message


def test_a_member_the_central_directory_does_not_list(protected):
    """A local entry that the central directory leaves out is invisible to zipfile and to unzip."""
    hidden = zip_bytes({"rows.txt": rows()}, compression=zipfile.ZIP_STORED)
    listed = zip_bytes({"ok.txt": "fine"}, compression=zipfile.ZIP_STORED)
    cut = hidden.index(b"PK\x01\x02")
    smuggled = hidden[:cut] + listed
    # Shift the listed archive's central directory offset by the smuggled entry's length.
    end = smuggled.rindex(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", smuggled, end + 16)
    smuggled = smuggled[:end + 16] + struct.pack("<I", offset + cut) + smuggled[end + 20:]
    cd = smuggled.index(b"PK\x01\x02")
    (local,) = struct.unpack_from("<I", smuggled, cd + 42)
    smuggled = smuggled[:cd + 42] + struct.pack("<I", local + cut) + smuggled[cd + 46:]
    assert zipfile.ZipFile(io.BytesIO(smuggled)).namelist() == ["ok.txt"]
    report = scan({"r.zip": smuggled}, protected=protected)
    assert_only_under(report, "r.zip")


# ----- gzip ------------------------------------------------------------------------------------------

def gzip_member(body: bytes, *, extra: bytes | None = None, name: bytes | None = None,
                comment: bytes | None = None) -> bytes:
    flags = (4 if extra is not None else 0) | (8 if name is not None else 0) | (16 if comment is not None else 0)
    header = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0" + b"\x00\x03"
    if extra is not None:
        header += struct.pack("<H", len(extra)) + extra
    if name is not None:
        header += name + b"\0"
    if comment is not None:
        header += comment + b"\0"
    engine = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = engine.compress(body) + engine.flush()
    return header + deflated + struct.pack("<II", zlib.crc32(body), len(body) & 0xFFFFFFFF)


@pytest.mark.parametrize("field", ["extra", "name", "comment"])
def test_gzip_header_fields(protected, field):
    text = rows().replace("\n", " ").encode()  # FNAME and FCOMMENT end at a NUL; no NUL in rows anyway
    payload = struct.pack("<2sH", b"XY", len(text)) + text if field == "extra" else text
    blob = gzip_member(b"fine\n", **{field: payload})
    assert gzip.decompress(blob) == b"fine\n"
    report = scan({"note.txt.gz": blob}, protected=protected)
    assert_only_under(report, "note.txt.gz")


def test_gzip_extra_field_of_no_known_format_blocks():
    report = scan({"note.txt.gz": gzip_member(b"fine\n", extra=struct.pack("<2sH", b"XY", len(NOISE)) + NOISE)})
    [f] = unexamined(report)
    assert f.severity.value == "block" and "gzip" in f.message


def test_second_gzip_member_header(protected):
    blob = gzip.compress(b"fine\n") + gzip_member(b"also fine\n", comment=rows().replace("\n", " ").encode())
    report = scan({"note.txt.gz": blob}, protected=protected)
    assert_only_under(report, "note.txt.gz")
    assert any("member 2" in f for f in linked_files(report))


def test_data_after_a_gzip_stream_blocks():
    report = scan({"note.txt.gz": gzip.compress(b"fine\n") + NOISE})
    assert report.verdict.value == "block"


# ----- tar -------------------------------------------------------------------------------------------

def tar_with(pax: dict[str, str] | None = None) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("ok.txt")
        info.size = 5
        info.pax_headers = pax or {}
        archive.addfile(info, io.BytesIO(b"fine\n"))
    return buffer.getvalue()


def test_a_plain_tar_leaves_nothing_unexamined():
    report = scan({"b.tar": tar_with(), "b.tgz": gzip.compress(tar_with())})
    assert report.verdict.value == "pass", report.findings
    assert all(c.unexamined == 0 for c in report.coverage)


def test_tar_pax_records_and_data_after_the_end(protected):
    report = scan({"b.tar": tar_with({"comment": rows().replace("\n", " ")})}, protected=protected)
    assert linked_files(report) == {"b.tar!(member names and headers)"}
    plain = tar_with()
    after = scan({"b.tar": plain + rows().encode(), "b.tgz": gzip.compress(plain + rows().encode())}, protected=protected)
    assert linked_files(after) == {"b.tar!(data after the end of the archive)", "b.tgz!(data after the end of the archive)"}


def test_tar_block_padding_that_is_not_zeros(protected):
    data = bytearray(tar_with())
    at = data.index(b"fine\n") + 5  # the member's data is padded with zeros to a 512-byte block
    text = rows(10, 2).encode()
    data[at:at + len(text)] = text
    report = scan({"b.tar": bytes(data)}, protected=protected)
    assert linked_files(report) == {"b.tar!(block padding after member ok.txt)"}


# ----- PNG -------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(*chunks: bytes, trailing: bytes = b"") -> bytes:
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(b"\x00\x10\x20\x00\x30\x40"))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(chunks) + pixels + png_chunk(b"IEND", b"") + trailing


def test_a_plain_png_is_for_human_eyes_only():
    report = scan({"plot.png": png(png_chunk(b"tEXt", b"Software\0matplotlib"))})
    assert report.verdict.value == "review"
    assert not unexamined(report)
    [top] = [c for c in report.coverage if c.name == "plot.png"]
    assert top.unexamined == 0 and top.human > 0


@pytest.mark.parametrize("chunk", ["tEXt", "zTXt", "iTXt", "iTXt-compressed"])
def test_png_text_chunks(protected, chunk):
    text = rows().encode()
    body = {
        "tEXt": b"Comment\0" + text,
        "zTXt": b"Comment\0\0" + zlib.compress(text),
        "iTXt": b"Comment\0\0\0en\0\0" + text,
        "iTXt-compressed": b"Comment\0\1\0en\0\0" + zlib.compress(text),
    }[chunk]
    report = scan({"plot.png": png(png_chunk(chunk[:4].encode(), body))}, protected=protected)
    assert_only_under(report, "plot.png")


def test_data_after_png_iend(protected):
    report = scan({"plot.png": png(trailing=rows().encode())}, protected=protected)
    assert linked_files(report) == {"plot.png!(data after IEND)"}
    [f] = unexamined(scan({"plot.png": png(trailing=NOISE)}))
    assert f.severity.value == "block" and "plot.png" in f.message and "after IEND" in f.message


def test_unknown_png_chunk_blocks():
    [f] = unexamined(scan({"plot.png": png(png_chunk(b"prVt", NOISE))}))
    assert "prVt" in f.message and f.severity.value == "block"


# ----- JPEG and GIF ----------------------------------------------------------------------------------

def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg(*segments: bytes, trailing: bytes = b"") -> bytes:
    """The structure of a baseline JPEG (tables and pixel data are stand-ins: nothing decodes them)."""
    head = jpeg_segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0") + jpeg_segment(0xDB, b"\0" + bytes(range(64)))
    frame = jpeg_segment(0xC0, b"\x08\0\x02\0\x02\x01\x01\x11\0") + jpeg_segment(0xC4, b"\0" + bytes(16) + b"\x01")
    scan = jpeg_segment(0xDA, b"\x01\x01\0\0\x3f\0") + b"\x12\x34\xff\x00\x56"
    return b"\xff\xd8" + head + b"".join(segments) + frame + scan + b"\xff\xd9" + trailing


def gif(*extensions: bytes, trailing: bytes = b"") -> bytes:
    image = b"\x2c\0\0\0\0\x02\0\x02\0\0" + b"\x02\x02\x44\x01\0"
    return b"GIF89a\x02\0\x02\0\x80\0\0" + b"\0\0\0\xff\xff\xff" + b"".join(extensions) + image + b"\x3b" + trailing


def gif_extension(label: int, body: bytes) -> bytes:
    chunks = b"".join(bytes([len(body[i:i + 255])]) + body[i:i + 255] for i in range(0, len(body), 255))
    return bytes([0x21, label]) + chunks + b"\0"


def test_plain_jpeg_and_gif_are_for_human_eyes_only():
    report = scan({"a.jpg": jpeg(), "b.gif": gif(gif_extension(0xF9, b"\0\0\0\0"))})
    assert report.verdict.value == "review" and not unexamined(report), report.findings
    assert all(c.unexamined == 0 and c.human > 0 for c in report.coverage)


def test_jpeg_comment_app_segment_and_trailing_data(protected):
    text = rows().encode()
    report = scan({"a.jpg": jpeg(jpeg_segment(0xFE, text)), "b.jpg": jpeg(jpeg_segment(0xE5, b"Notes\0" + text)),
                   "c.jpg": jpeg(trailing=text)}, protected=protected)
    assert {f.split("!")[0] for f in linked_files(report)} == {"a.jpg", "b.jpg", "c.jpg"}
    [exif] = unexamined(scan({"d.jpg": jpeg(jpeg_segment(0xE1, b"Exif\0\0" + NOISE))}))
    assert "APP1" in exif.message and "d.jpg" in exif.message


def test_gif_comment_extensions_and_trailing_data(protected):
    text = rows().encode()
    report = scan({"a.gif": gif(gif_extension(0xFE, text)), "b.gif": gif(gif_extension(0xFF, b"XMP DataXMP" + text)),
                   "c.gif": gif(trailing=text)}, protected=protected)
    assert {f.split("!")[0] for f in linked_files(report)} == {"a.gif", "b.gif", "c.gif"}


def test_a_real_jpeg_and_gif_leave_nothing_unexamined():
    image = pytest.importorskip("PIL.Image")
    out = {}
    for name, fmt in (("p.jpg", "JPEG"), ("p.gif", "GIF")):
        buffer = io.BytesIO()
        image.new("RGB", (40, 30), "teal").save(buffer, fmt)
        out[name] = buffer.getvalue()
    report = scan(out)
    assert report.verdict.value == "review" and not unexamined(report), report.findings
    assert all(c.unexamined == 0 and c.human > 0 for c in report.coverage), report.coverage


# ----- PDF -------------------------------------------------------------------------------------------

def pdf(objects: dict[int, bytes], updates: list[dict[int, bytes]] = ()) -> bytes:
    """A PDF with a cross-reference table, and incremental updates appended after its %%EOF."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    size = max(objects) + 1
    prev = None
    for section in [objects, *updates]:
        offsets = {}
        for number, body in sorted(section.items()):
            offsets[number] = len(out)
            out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n"
        for number, at in sorted(offsets.items()):
            out += b"%d 1\n%010d 00000 n \n" % (number, at)
        trailer = b"/Size %d /Root 1 0 R" % size + (b" /Prev %d" % prev if prev is not None else b"")
        out += b"trailer\n<< " + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
        prev = xref
    return bytes(out)


def stream(dictionary: bytes, data: bytes, compress: bool = True) -> bytes:
    if compress:
        data = zlib.compress(data)
        dictionary += b" /Filter /FlateDecode"
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def page_objects(text: str, extra_catalog: bytes = b"") -> dict[int, bytes]:
    return {
        1: b"<< /Type /Catalog /Pages 2 0 R " + extra_catalog + b">>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 300] /Contents 4 0 R "
           b"/Resources << /Font << /F1 5 0 R >> >> >>",
        4: stream(b"", f"BT /F1 10 Tf 20 200 Td ({text}) Tj ET".encode()),
        5: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }


def test_a_plain_pdf_is_for_human_eyes_only():
    report = scan({"paper.pdf": pdf(page_objects("Counts by region"))})
    assert report.verdict.value == "review", report.findings
    assert not unexamined(report)


def test_pdf_embedded_file(protected):
    objects = page_objects("Counts by region", b"/Names << /EmbeddedFiles << /Names [(rows.csv) 6 0 R] >> >> ")
    objects[6] = b"<< /Type /Filespec /F (rows.csv) /EF << /F 7 0 R >> >>"
    objects[7] = stream(b"/Type /EmbeddedFile", rows().encode())
    report = scan({"paper.pdf": pdf(objects)}, protected=protected)
    assert_only_under(report, "paper.pdf")
    assert any("embedded file" in f for f in linked_files(report))


def test_pdf_incremental_update_hides_the_first_revision(protected):
    line = rows(10, 1).strip().replace(",", " ")
    first = page_objects(f"Patient {line}")
    update = {4: stream(b"", b"BT /F1 10 Tf 20 200 Td (Counts by region) Tj ET")}
    report = scan({"paper.pdf": pdf(first, [update])}, protected=protected)
    assert_only_under(report, "paper.pdf")


def test_pdf_stream_that_cannot_be_decoded_blocks():
    objects = page_objects("Counts by region")
    objects[6] = b"<< /Filter /LZWDecode /Length %d >>\nstream\n" % len(NOISE) + NOISE + b"\nendstream"
    report = scan({"paper.pdf": pdf(objects)})
    assert unexamined(report) and report.verdict.value == "block"


def test_pdf_data_after_the_last_eof(protected):
    report = scan({"paper.pdf": pdf(page_objects("Counts")) + rows().encode()}, protected=protected)
    assert_only_under(report, "paper.pdf")


# ----- notebooks --------------------------------------------------------------------------------------

def test_notebook_attachment(protected):
    cell = {"cell_type": "markdown", "source": "see the attachment", "metadata": {},
            "attachments": {"rows.csv": {"text/csv": base64.b64encode(rows().encode()).decode()}}}
    report = scan({"a.ipynb": notebook(cell)}, protected=protected)
    assert_only_under(report, "a.ipynb")


def test_notebook_cell_and_output_metadata(protected):
    cell = code_cell("x = 1", result({"text/plain": "1"}))
    cell["metadata"] = {"notes": rows(10)}
    cell["outputs"][0]["metadata"] = {"more": rows(20)}
    report = scan({"a.ipynb": notebook(cell)}, protected=protected)
    assert len(of(report, "record_linkage", "block")) >= 2
    assert {f.file for f in of(report, "record_linkage")} == {"a.ipynb"}
    assert {f.location.split(",")[0] for f in of(report, "record_linkage")} >= {"cell 1 metadata", "cell 1 output 1 metadata"}


def test_notebook_output_of_an_unlisted_mime_type_and_unknown_fields(protected):
    cell = code_cell("x = 1", result({"text/csv": rows(10)}))
    cell["x-hidden"] = rows(20)
    nb = json.loads(notebook(cell))
    nb["x-more"] = {"rows": rows(30)}
    report = scan({"a.ipynb": json.dumps(nb)}, protected=protected)
    where = {f.location.split(",")[0] for f in of(report, "record_linkage", "block")}
    assert {"cell 1 output 1", "cell 1 other fields", "notebook other fields"} <= where, where


def test_notebook_duplicate_keys(protected):
    """json.loads keeps the last of two equal keys; Jupyter shows the last; the first still leaves."""
    clean = notebook(code_cell("x = 1"))
    hidden = json.dumps([{"cell_type": "raw", "source": rows(), "metadata": {}}])
    text = clean.decode().replace('"cells":', f'"cells": {hidden}, "cells":', 1)
    report = scan({"a.ipynb": text}, protected=protected)
    assert of(report, "record_linkage", "block")


def test_notebook_image_output_is_opened_like_a_png(protected):
    image = png(png_chunk(b"tEXt", b"Comment\0" + rows().encode()))
    cell = code_cell("plot()", result({"text/plain": "<Figure>", "image/png": base64.b64encode(image).decode()}))
    report = scan({"a.ipynb": notebook(cell)}, protected=protected)
    assert_only_under(report, "a.ipynb")


# ----- human eyes by policy ---------------------------------------------------------------------------

def human_policy(*types: str):
    return dataclasses.replace(POLICY, files=dataclasses.replace(POLICY.files, human_review_types=list(types)))


def test_policy_may_leave_unexamined_bytes_of_a_type_to_human_eyes():
    blob = png(trailing=NOISE)
    assert unexamined(scan({"plot.png": blob}))[0].severity.value == "block"
    report = scan({"plot.png": blob}, policy=human_policy("png"))
    assert report.verdict.value == "review" and not unexamined(report)
    [f] = [f for f in report.findings if f.message.startswith("bytes for human eyes in ")]
    assert f.severity.value == "warn" and f.file == "plot.png!(data after IEND)"
    [top] = [c for c in report.coverage if c.name == "plot.png"]
    assert top.unexamined == 0 and top.human >= len(NOISE)
    assert any(len(NOISE) == r.size and "after IEND" in r.label for r in top.human_regions)


def test_coverage_says_which_bytes_were_read_and_which_were_not():
    report = scan({"r.zip": zip_bytes({"ok.txt": "fine"}) + NOISE, "ok.md": "fine"})
    by_name = {c.name: c for c in report.coverage}
    assert by_name["ok.md"].checked == 4 and by_name["ok.md"].unexamined == 0
    assert by_name["r.zip"].unexamined == len(NOISE)
    assert [r.label for r in by_name["r.zip"].unexamined_regions] == ["r.zip!(data after the end of the archive)"]
    assert set(report.to_json()) == {"verdict", "findings"}  # what `enclave review scan --json` has always said
    body = report.to_json(coverage=True)
    assert body["coverage"][0]["name"] == "r.zip" and body["coverage"][0]["unexamined"] == len(NOISE)


def test_real_plots_leave_nothing_unexamined(protected):
    """What matplotlib writes (PNG with a Software text chunk; PDF with Type 3 or Type 42 fonts, an
    image, CID strings) is read or for human eyes, and its drawing numbers are not phone numbers;
    the text a PDF shows is read (a PNG's is pixels: for human eyes)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    plt.plot([1, 2, 3])
    plt.title("Income by group")
    plt.imshow([[1, 2], [3, 4]])
    out = {}
    for name, fmt, fonttype in (("plot.png", "png", 3), ("plot.pdf", "pdf", 3), ("plot42.pdf", "pdf", 42)):
        buffer = io.BytesIO()
        with matplotlib.rc_context({"pdf.fonttype": fonttype}):
            fig.savefig(buffer, format=fmt)
        out[name] = buffer.getvalue()
    person = people()[12]
    plt.xlabel(f"{person.name} born {person.dob}")
    for name, fmt, fonttype in (("named.pdf", "pdf", 3), ("named42.pdf", "pdf", 42)):
        buffer = io.BytesIO()
        with matplotlib.rc_context({"pdf.fonttype": fonttype}):
            fig.savefig(buffer, format=fmt)
        out[name] = buffer.getvalue()
    plt.close(fig)
    clean = {k: v for k, v in out.items() if not k.startswith("named")}
    report = scan(clean)
    assert report.verdict.value == "review", [f for f in report.findings if f.severity.value != "warn"]
    assert all(c.unexamined == 0 and c.human > 0 for c in report.coverage), report.coverage
    texts = [s.name for s in report.files if s.name.endswith("(PDF content streams)")]
    assert texts == ["plot.pdf!(PDF content streams)", "plot42.pdf!(PDF content streams)"]
    named = scan({k: v for k, v in out.items() if k.startswith("named")}, protected=protected)
    assert linked_files(named) == {"named.pdf!(PDF content streams)", "named42.pdf!(PDF content streams)"}
