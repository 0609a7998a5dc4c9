"""Model Enclave lock-down: a Jupyter server extension that stops bulk transfer to the browser.

A browser can always show what it displays, so the aim is to stop bulk transfer around output
review, not viewing. Loaded by the notebook image's config; see install.py for what it changes:
- /files/, /view/, nbconvert, terminals and `?download=` requests are refused (403 with a reason),
  decided on a decoded, case-folded path so that spellings cannot dodge it;
- the contents API refuses reads of the datasets mount, of links outside the root and of
  responses over `EnclaveLockdown.max_read_bytes`, withholds oversized notebook outputs, and logs
  every read as one structured line;
- every kernel message over `EnclaveLockdown.max_output_bytes` is replaced by a notice;
- as a backstop, no non-static response over the cap leaves the server.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "enclave_lockdown"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .install import install

    install(serverapp)
