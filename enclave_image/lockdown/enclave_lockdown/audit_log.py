"""One structured log line per event, so the enclave's log collector can parse what was read."""
from __future__ import annotations

import json
import logging
from typing import Any


def log_event(log: logging.Logger, event: str, **fields: Any) -> None:
    """Log `event {json}` at INFO: e.g. `contents_read {"allowed": true, "path": ..., ...}`.

    One line, keys sorted, so that a line is grep-able and a sequence of them diff-able.
    """
    log.info("%s %s", event, json.dumps(fields, sort_keys=True, default=str))
