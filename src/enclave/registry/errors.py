"""Errors the registry raises for things a user did, as opposed to bugs.

Each carries a message fit to show as one line to an operator or a scholar; the CLI prints it and
exits 2, the HTTP services turn it into a 4xx.
"""


class RegistryError(Exception):
    """Bad input or a refused operation; the message says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(RegistryError):
    """An unknown person, project, dataset or key."""


class Conflict(RegistryError):
    """The thing already exists, or the change contradicts the current state."""


class Forbidden(RegistryError):
    """The acting person lacks the role the operation needs."""


class InvalidTransition(Conflict):
    """A lifecycle move that the state machine does not allow from the current state."""


class AccessDenied(RegistryError):
    """A scholar may not use the enclave right now; `reason` is a short machine-readable code."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class DatabaseUnavailable(RegistryError):
    """The registry database cannot be reached or is not initialised."""
