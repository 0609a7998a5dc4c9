"""The contents API with the enclave's read rules: what JupyterLab opens, within limits.

Reads are checked twice: before the file is read (cheap refusals, and a kernel cannot make the
server load a huge file) and on the finished response (what actually goes to the browser). Every
read is logged, allowed or refused. Writes (uploads, saves) are ingress and stay allowed.
"""
from __future__ import annotations

import json
import os

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.services.contents.handlers import ContentsHandler
from tornado import web

try:
    from jupyter_client.jsonutil import json_default
except ImportError:  # older jupyter_client
    from jupyter_client.jsonutil import date_default as json_default

from .audit_log import log_event
from .notebook_outputs import withhold_notebook_outputs
from .policy import EnclaveLockdown

DATASETS_REASON = "datasets are readable from kernels only, never through the contents API"
OUTSIDE_ROOT_REASON = "links that lead outside the notebook directory are not followed"


def is_within(path: str, directory: str) -> bool:
    """Whether resolved `path` is `directory` or lies below it."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


class LockedContentsHandler(ContentsHandler):
    """ContentsHandler whose GET enforces the enclave's read rules and logs each read."""

    @property
    def lockdown(self) -> EnclaveLockdown:
        return self.settings["enclave_lockdown"]

    def _log_read(self, path: str, size: int | None, allowed: bool, reason: str | None = None, **extra) -> None:
        log_event(self.log, "contents_read", user=self.current_user.username, path=path, size=size,
                  allowed=allowed, reason=reason, **extra)

    def _refuse(self, path: str, size: int | None, reason: str) -> None:
        self._log_read(path, size, allowed=False, reason=reason)
        self.clear_header("Location")
        self.clear_header("Last-Modified")
        self.set_status(403)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": reason, "reason": "Forbidden by enclave policy"}))

    def _resolve(self, path: str) -> str | None:
        """The resolved filesystem path of an API path, or None where it does not exist."""
        os_path = self.contents_manager._get_os_path(path)  # 404 for paths outside the root
        return os.path.realpath(os_path) if os.path.lexists(os_path) else None

    def _is_dataset(self, real_path: str) -> bool:
        return is_within(real_path, self.lockdown.datasets_path(self.contents_manager.root_dir))

    async def _pre_read_refusal(self, path: str) -> tuple[str, int | None] | None:
        """Why a GET must be refused before anything is read, with the file's size, or None."""
        cm = self.contents_manager
        if not cm.allow_hidden and await ensure_async(cm.is_hidden(path)):
            return None  # the parent class answers 404, as for any hidden path
        real = self._resolve(path)
        if real is None:
            return None  # 404 from the parent class
        if not is_within(real, os.path.realpath(cm.root_dir)):
            return OUTSIDE_ROOT_REASON, None
        if os.path.isdir(real):
            return None  # directory listings are fine, even of the datasets mount
        size = os.stat(real).st_size
        if self.get_query_argument("content", default="1") == "0":
            return None  # metadata only: name, size, dates
        if self._is_dataset(real):
            return DATASETS_REASON, size
        as_notebook = self.get_query_argument("type", default=None) == "notebook" or (
            self.get_query_argument("type", default=None) is None and path.endswith(".ipynb"))
        policy = self.lockdown
        if as_notebook:
            # Notebooks are parsed and their oversized outputs withheld, so the file may be larger
            # than what is finally sent; only guard the server's memory here.
            if size > policy.max_notebook_bytes:
                return (f"notebook is {size:,} bytes, over the {policy.max_notebook_bytes:,}-byte limit "
                        "for notebooks the browser may open", size)
        elif size > policy.max_read_bytes:
            return (f"file is {size:,} bytes, over the {policy.max_read_bytes:,}-byte limit for what the "
                    "browser may read; read it in a kernel or export it through output review", size)
        return None

    @web.authenticated
    @authorized
    async def get(self, path: str = "") -> None:
        path = (path or "").strip("/")
        refusal = await self._pre_read_refusal(path)
        if refusal is not None:
            reason, size = refusal
            self._refuse(path, size, reason)
            return
        await super().get(path)

    def _finish_model(self, model: dict, location: bool = True) -> None:
        if self.request.method != "GET":
            super()._finish_model(model, location)
            return
        policy = self.lockdown
        path = model.get("path", "")
        withheld = 0
        if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
            overhead = len(json.dumps({**model, "content": None}, default=json_default))
            withheld = withhold_notebook_outputs(model["content"], policy.max_output_bytes,
                                                 policy.max_read_bytes - overhead, policy.max_read_bytes)
        body_size = len(json.dumps(model, default=json_default))
        if body_size > policy.max_read_bytes:
            what = "directory listing" if model.get("type") == "directory" else "response"
            self._refuse(path, body_size,
                         f"{what} of {body_size:,} bytes is over the {policy.max_read_bytes:,}-byte limit "
                         "for what the browser may read; read it in a kernel or export it through output review")
            return
        self._log_read(path, body_size, allowed=True, type=model.get("type"),
                       content=model.get("content") is not None, withheld_outputs=withheld)
        super()._finish_model(model, location)

    @web.authenticated
    @authorized
    async def post(self, path: str = "") -> None:
        # Copying a dataset file into the work directory would dodge the datasets rule (the size
        # cap still holds, but a kernel is the place to work with datasets).
        body = self.get_json_body() or {}
        copy_from = body.get("copy_from") if isinstance(body, dict) else None
        if isinstance(copy_from, str):
            real = self._resolve(copy_from.strip("/"))
            if real is not None and self._is_dataset(real):
                self._refuse(copy_from, None, DATASETS_REASON)
                return
        await super().post(path)
