"""The system of record: people, projects, grants, keys and the hash-chained audit log.

Imports nothing else of ours; every service builds on it.
"""

from enclave.registry.errors import AccessDenied, NotFound, RegistryError

__all__ = ["AccessDenied", "NotFound", "RegistryError"]
