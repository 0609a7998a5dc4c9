"""Routes that never serve the browser: decided on a normalised path before Tornado routes it.

Tornado matches its routes against the raw (percent-encoded) path and is case-sensitive, so a
decision taken on the raw path can be dodged by spellings that some handler still accepts. We
therefore decode repeatedly, fold case, collapse slashes and refuse traversal segments outright:
refusing a few odd spellings no client sends is cheaper than reasoning about every handler.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from tornado import httputil
from tornado.routing import Matcher

from .audit_log import log_event

# Encoding layers we are willing to peel off. Browsers send one; more is an attempt to smuggle.
_MAX_DECODE_ROUNDS = 4

# First path segments (after the server's base URL) that serve file contents in bulk.
_REFUSED_FIRST_SEGMENT = {
    "files": "raw file downloads (/files/) are disabled in the enclave; open files in JupyterLab",
    "view": "the file viewer (/view/) serves raw files and is disabled in the enclave",
    "nbconvert": "nbconvert downloads are disabled in the enclave; export through output review",
    # A terminal streams whatever it cats, with no cap: kernels have the same reach, capped.
    "terminals": "terminals are disabled in the enclave; use a notebook kernel",
}
_REFUSED_API_SEGMENT = {
    "nbconvert": "nbconvert is disabled in the enclave; export through output review",
    "terminals": "terminals are disabled in the enclave; use a notebook kernel",
}
_DOWNLOAD_REASON = "downloads (?download=...) are disabled in the enclave; export through output review"
_TRAVERSAL_REASON = "paths with '.' or '..' segments are refused"
_ENCODING_REASON = "paths encoded more than a few times over are refused"

_SLASHES = re.compile(r"[/\\]+")


class Refusal(Exception):
    """A request path the enclave refuses; `reason` is shown to the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_path(raw: str) -> str:
    """Percent-decode until stable; refuse paths that keep decoding (smuggled encodings)."""
    path = raw
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            return path
        path = decoded
    raise Refusal(_ENCODING_REASON)


def path_segments(raw: str) -> list[str]:
    """The decoded, case-folded, non-empty segments of a request path.

    Backslashes count as separators because some clients and proxies treat them so.
    """
    segments = [s for s in _SLASHES.split(decode_path(raw).lower()) if s]
    if any(s.strip() in (".", "..") for s in segments):
        raise Refusal(_TRAVERSAL_REASON)
    return segments


def refusal_reason(raw_path: str, query_names: list[str], base_url: str) -> str | None:
    """Why a request must be refused before routing, or None to let it through.

    `query_names` are the query-string argument names; `base_url` is the server's prefix
    (e.g. /user/alice/). Paths outside the base URL are checked whole, which can only refuse more.
    """
    if any(name.lower() == "download" for name in query_names):
        return _DOWNLOAD_REASON
    try:
        segments = path_segments(raw_path)
        base = path_segments(base_url)
    except Refusal as refusal:
        return refusal.reason
    if segments[: len(base)] == base:
        segments = segments[len(base):]
    if not segments:
        return None
    if segments[0] in _REFUSED_FIRST_SEGMENT:
        return _REFUSED_FIRST_SEGMENT[segments[0]]
    if segments[0] == "api" and len(segments) > 1 and segments[1] in _REFUSED_API_SEGMENT:
        return _REFUSED_API_SEGMENT[segments[1]]
    return None


def is_read_only_static(raw_path: str, base_url: str) -> bool:
    """Whether a request is for the server's packaged static assets (exempt from the size cap).

    Decided on the raw path, exactly as Tornado routes it: these prefixes reach only
    StaticFileHandlers whose roots lie on the image's read-only filesystem, where no kernel can
    plant a file. JupyterLab's own bundles are several MB, so they cannot be capped.
    """
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    if "%" in raw_path or "\\" in raw_path or "//" in raw_path:
        return False
    return raw_path.startswith((base + "static/", base + "lab/extensions/"))


@dataclass
class RefusedRouteMatcher(Matcher):
    """Matches the requests `refusal_reason` refuses; placed first in the application's router."""

    base_url: str

    def match(self, request: httputil.HTTPServerRequest) -> dict | None:
        reason = refusal_reason(request.path, list(request.query_arguments), self.base_url)
        if reason is None:
            return None
        return {"path_args": [], "path_kwargs": {"reason": reason}}


def refused_route_handler():
    """The handler class for refused routes (imported lazily: it needs a configured server)."""
    from jupyter_server.base.handlers import APIHandler

    class RefusedRouteHandler(APIHandler):
        """Answers every method with 403 and the reason, after the usual authentication.

        Authentication first, so that the log line names the user and a stranger learns nothing.
        """

        async def _refuse(self, reason: str) -> None:
            if self.current_user is None:
                self.set_status(403)
                self.finish({"message": "authentication required", "reason": "Forbidden"})
                return
            log_event(self.log, "route_refused", user=self.current_user.username,
                      method=self.request.method, path=self.request.path, allowed=False,
                      reason=reason)
            self.set_status(403)
            self.set_header("Content-Type", "application/json")
            self.finish({"message": reason, "reason": "Forbidden by enclave policy"})

        # XSRF and origin checks of APIHandler.prepare would answer first for unsafe methods;
        # either way the answer is a refusal.
        async def get(self, reason: str) -> None:
            await self._refuse(reason)

        post = put = patch = delete = get

        async def head(self, reason: str) -> None:
            await self._refuse(reason)

    return RefusedRouteHandler
