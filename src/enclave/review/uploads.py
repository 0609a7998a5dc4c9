"""Reading a submission's multipart body under the size caps, straight into the quarantine.

The caps are checked while the body streams in (the declared length first, then every chunk), so
an oversized upload is refused without being held in memory or on disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from enclave.errors import BadInput, TooLarge, UnsupportedMediaType
from enclave.review.quarantine import Quarantine, StagedFile
from enclave.review.settings import ReviewSettings

MAX_FIELD_BYTES = 64 * 1024  # justification and context travel as form fields
FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries and headers on top of the files' bytes
FIELDS = ("justification", "context", "note")


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(f"the upload is larger than the cap of {limit} bytes per export")
        yield chunk


async def read_upload(request: Request, quarantine: Quarantine,
                      settings: ReviewSettings) -> tuple[dict[str, str], list[StagedFile]]:
    """Parse a multipart upload under the caps and put every file in the quarantine."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the files as multipart/form-data")
    cap = settings.max_request_bytes + FORM_OVERHEAD_BYTES
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadInput("bad Content-Length")
        if int(length) > cap:
            raise TooLarge(f"the upload is {int(length)} bytes; an export may carry at most "
                           f"{settings.max_request_bytes} bytes")
    parser = MultiPartParser(request.headers, _limited(request.stream(), cap), max_files=settings.max_files,
                             max_fields=8, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadInput(f"bad upload: {exc.message}") from None
    try:
        fields: dict[str, str] = {}
        uploads: list[UploadFile] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "files":
                    raise BadInput(f"unexpected file field {name!r}: send files as 'files'")
                uploads.append(value)
            elif name in FIELDS:
                fields[name] = value
            else:
                raise BadInput(f"unexpected form field {name[:40]!r}")
        total = 0
        for upload in uploads:
            size = upload.size or 0
            if size > settings.max_file_bytes:
                raise TooLarge(f"{upload.filename!r} is {size} bytes; the cap per file is {settings.max_file_bytes} bytes")
            total += size
        if total > settings.max_request_bytes:
            raise TooLarge(f"the files add up to {total} bytes; the cap per export is {settings.max_request_bytes} bytes")
        staged = []
        for upload in uploads:
            if not upload.filename:
                raise BadInput("a file was sent without a file name")
            sha, size = await run_in_threadpool(quarantine.put_file, upload.file, limit=settings.max_file_bytes)
            staged.append(StagedFile(upload.filename, sha, size))
        return fields, staged
    finally:
        await form.close()
