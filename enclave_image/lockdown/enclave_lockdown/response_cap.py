"""A backstop size cap on every HTTP response the server sends, whatever handler produced it.

The contents API has its own, friendlier checks (contents.py). This transform catches the routes
nobody thought of: JupyterLab's settings and workspaces APIs read files a kernel can write, and
any extension added later may do the same. Packaged static assets are exempt (request_paths).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from tornado import httputil
from tornado.web import OutputTransform

from .audit_log import log_event
from .request_paths import is_read_only_static

# Headers that describe the refused body, not the refusal.
_BODY_HEADERS = ("Content-Length", "Content-Type", "Content-Disposition", "Content-Encoding",
                 "Etag", "Last-Modified", "Location", "Transfer-Encoding")


class ResponseSizeCap(OutputTransform):
    """Turns an over-cap response into 403, or cuts a streamed one off at the cap.

    Tornado builds one transform per request; `install` binds the cap, base URL and logger with
    functools.partial, since Tornado passes only the request.
    """

    def __init__(self, cap: int, base_url: str, log: logging.Logger, request: httputil.HTTPServerRequest):
        super().__init__(request)
        self._request = request
        self._cap = cap
        self._log = log
        self._exempt = is_read_only_static(request.path, base_url)
        self._sent = 0
        self._cut = False

    def _log_refusal(self, size: int | str) -> None:
        log_event(self._log, "response_capped", method=self._request.method, path=self._request.path,
                  size=size, cap=self._cap, allowed=False)

    def transform_first_chunk(
        self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        if self._exempt or status_code in (101, 204, 304):
            return status_code, headers, chunk
        declared = headers.get("Content-Length")
        size = int(declared) if declared and declared.isdigit() else len(chunk)
        if size > self._cap:
            self._log_refusal(size)
            body = json.dumps({
                "message": f"response of {size:,} bytes is over the enclave's {self._cap:,}-byte limit "
                           "for what the browser may receive; read it in a kernel or export it through output review",
                "reason": "Forbidden by enclave policy",
            }).encode()
            for name in _BODY_HEADERS:
                headers.pop(name, None)
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
            self._cut = True  # anything the handler streams after this is discarded
            return 403, headers, body
        self._sent = len(chunk)
        return status_code, headers, chunk

    def transform_chunk(self, chunk: bytes, finishing: bool) -> bytes:
        if self._exempt:
            return chunk
        if self._cut:
            return b""
        self._sent += len(chunk)
        if self._sent > self._cap:
            # Headers are gone already: all we can do is stop sending, which the client sees as a
            # truncated response.
            self._cut = True
            self._log_refusal(f">{self._cap}")
            return b""
        return chunk


def response_size_cap(cap: int, base_url: str, log: logging.Logger) -> Any:
    """A transform factory for `Application.transforms` (called with the request)."""

    def make(request: httputil.HTTPServerRequest) -> ResponseSizeCap:
        return ResponseSizeCap(cap, base_url, log, request)

    return make
