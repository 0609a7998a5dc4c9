"""A person's own registry password at the command line, for the acts the two-person rule covers
(review decisions, model onboarding and promotions): naming someone with `--as` is not being them.

The password comes from `--password-file` (mode 0600, first line), else an environment variable,
else a prompt that does not echo — only on a terminal, so that a script that gives none is refused
rather than left waiting.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path

from enclave.envsettings import env_str
from enclave.errors import BadInput, Forbidden, Unauthenticated


def read_password_file(path: Path, option: str = "--password-file") -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(f"{option} {path} is not a regular file")
        if info.st_mode & 0o077:
            raise BadInput(f"{option} {path} is readable by others (mode {info.st_mode & 0o777:o}): "
                           f"chmod 600 {path}")
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as exc:
        raise BadInput(f"cannot read {option} {path}: {exc.strerror}") from None


def password(actor: str, password_file: Path | None, env_name: str | None,
             option: str = "--password-file") -> str | None:
    """`actor`'s password from the file, the environment variable `env_name`, or a prompt; None
    when none was given and there is no terminal to ask on."""
    if password_file is not None:
        return read_password_file(password_file, option)
    given = env_str(env_name) if env_name else None
    if given:
        return given
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"password for {actor} (as for the hub login): ")
    return None


def os_user() -> str:
    """Who ran the command, as the operating system says (recorded with the act or the failed
    attempt, so someone trying other people's names is traceable)."""
    try:
        import pwd

        return f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
    except (ImportError, KeyError):
        return f"uid {getattr(os, 'getuid', lambda: '?')()}"


def require_password(eng, actor: str | None, password_file: Path | None, doing: str, *, env_name: str,
                     option: str = "--password-file", failed_action: str) -> tuple[str, str]:
    """(actor, how they authenticated), once `actor`'s own registry password checks out; otherwise
    Unauthenticated, and the attempt recorded as `failed_action` on its own (committed even though
    nothing else happens)."""
    from enclave.registry import audit, credentials
    from enclave.registry.db import session_scope
    from enclave.registry.people import SYSTEM_ACTOR

    if not actor:
        raise Forbidden("who is acting? pass --as USER or set ENCLAVE_OPERATOR")
    given = password(actor, password_file, env_name, option)
    via = f"password, cli, os user {os_user()}"
    with session_scope(eng) as s:
        ok = bool(given) and credentials.check_password(s, actor, given)
    if ok:
        return actor, via
    with session_scope(eng) as s:
        audit.append(s, actor=SYSTEM_ACTOR, action=failed_action, subject=f"person:{actor}",
                     details={"doing": doing, "via": via, "password_given": bool(given)})
    raise Unauthenticated(f"{doing} needs {actor}'s own password (the one their hub login takes): type it when "
                          f"asked on a terminal, or give {option} or ${env_name}; nothing was done")
