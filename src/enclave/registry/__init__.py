"""The system of record: people, projects, grants, keys, every table, and the hash-chained audit log.

Imports nothing of ours but `enclave.errors`; every service builds on it.
"""
