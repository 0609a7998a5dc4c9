"""Reading a service's settings from the environment: shared by the gateway and the review
service (JupyterHub passes settings to the services it manages as environment variables)."""

from __future__ import annotations

import os


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and what is wrong."""


def env_int(name: str, default: int, smallest: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < smallest:
        raise SettingsError(f"{name} must be at least {smallest}, not {value}")
    return value
