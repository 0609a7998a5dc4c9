"""Wire the lock-down into a configured ServerApp's Tornado application.

Everything fails closed: if a hook is not where this version of jupyter_server puts it, loading
raises, and the image's config (`ServerApp.reraise_server_extension_failures = True`) then stops
the server instead of running it unguarded.
"""
from __future__ import annotations

from typing import Any

from jupyter_server.services.contents.fileio import FileManagerMixin
from jupyter_server.services.contents.handlers import ContentsHandler
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from tornado.routing import Rule, RuleRouter

from .contents import LockedContentsHandler
from .kernel_connection import CappedKernelConnection
from .policy import EnclaveLockdown
from .request_paths import RefusedRouteMatcher, refused_route_handler
from .response_cap import response_size_cap


class LockdownNotInstalled(RuntimeError):
    """A hook the lock-down needs is missing: the server must not start without it."""


def _replace_handler(router: Any, old: type, new: type) -> int:
    """Swap `old` for `new` wherever a rule targets it, in this router and every nested one."""
    replaced = 0
    for rule in getattr(router, "rules", []):
        if rule.target is old:
            rule.target = new
            replaced += 1
        elif isinstance(rule.target, RuleRouter):
            replaced += _replace_handler(rule.target, old, new)
    return replaced


def install(serverapp: Any) -> EnclaveLockdown:
    """Install every guard on `serverapp` (after its web app exists) and return the policy."""
    policy = EnclaveLockdown(parent=serverapp, log=serverapp.log)
    web_app = serverapp.web_app
    cm = serverapp.contents_manager
    if not isinstance(cm, FileManagerMixin):
        # The read rules resolve real filesystem paths (symlinks, the datasets mount).
        raise LockdownNotInstalled(f"enclave lockdown needs a file-backed contents manager, not {type(cm).__name__}")

    connection_class = web_app.settings.get("kernel_websocket_connection_class")
    if not (isinstance(connection_class, type) and issubclass(connection_class, ZMQChannelsWebsocketConnection)):
        raise LockdownNotInstalled(f"enclave lockdown cannot cap kernel output through {connection_class!r}")

    web_app.settings["enclave_lockdown"] = policy

    # 1. Contents API: our handler in place of the stock one, wherever it is routed.
    if _replace_handler(web_app.default_router, ContentsHandler, LockedContentsHandler) == 0:
        raise LockdownNotInstalled("enclave lockdown found no contents API route to guard")

    # 2. Routes that serve files in bulk: refused before any routing, on a normalised path.
    web_app.default_router.rules.insert(
        0, Rule(RefusedRouteMatcher(serverapp.base_url), refused_route_handler(), name="enclave-lockdown-refused"))

    # 3. Kernel websocket: every outbound kernel message capped.
    web_app.settings["kernel_websocket_connection_class"] = CappedKernelConnection
    serverapp.kernel_websocket_connection_class = CappedKernelConnection

    # 4. Backstop: no response over the cap from any non-static route. First in the list, so it
    #    sees the body before any compression.
    web_app.transforms.insert(0, response_size_cap(policy.max_read_bytes, serverapp.base_url, serverapp.log))

    serverapp.log.info(
        "enclave lockdown active: max_read_bytes=%d max_output_bytes=%d datasets=%s",
        policy.max_read_bytes, policy.max_output_bytes, policy.datasets_path(cm.root_dir))
    return policy
