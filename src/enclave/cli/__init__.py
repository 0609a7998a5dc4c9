"""The `enclave` command: how operators run the enclave.

Every command that changes the registry runs in one transaction together with its audit event, so
it happens wholly or not at all. Mistakes (unknown names, bad dates, refused moves) print one line
on stderr and exit 2; nothing a user types produces a traceback (set ENCLAVE_DEBUG=1 to see one).

The command groups are one module each beside this one (`db`, `people`, `projects`, `review`, ...);
`app` assembles them. This module imports none of them at import time, so `enclave.cli` loads in
the bare package (the notebook client) and `main` can say which extra is missing instead of failing
with a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from enclave.envsettings import env_str
from enclave.errors import UserError

USER_ERROR_EXIT = 2
BUG_EXIT = 1
INTERRUPTED_EXIT = 130

# What the [registry] extra installs: without one of them the operator tools cannot run at all.
_REGISTRY_EXTRA = frozenset({"typer", "click", "sqlmodel", "sqlalchemy", "alembic"})


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _error_table() -> list[tuple[type[BaseException], Callable[[BaseException], str]]]:
    """The one table of what a user can cause: exception class -> the line printed on stderr (after
    "enclave: "); each exits USER_ERROR_EXIT. Checked in order; anything not here is a bug of ours."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    return [
        (UserError, lambda exc: exc.message),
        (OperationalError, lambda exc: f"database unreachable: {_first_line(exc)}"),
        # Two operators racing on the same name: the loser's whole transaction was rolled back.
        (IntegrityError, lambda exc: f"conflicting change, nothing was written: {_first_line(exc)}"),
    ]


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status, turning our errors into one line on stderr."""
    debug = bool(env_str("ENCLAVE_DEBUG"))  # any value: show tracebacks
    try:
        from enclave.cli.app import app
    except ModuleNotFoundError as missing:
        if (missing.name or "").split(".")[0] not in _REGISTRY_EXTRA:
            raise
        print(f"enclave: the operator tools need the registry extra: pip install 'enclave[registry]' ({missing})",
              file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        app(args=argv, prog_name="enclave", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    except Exception as exc:
        for cls, describe in _error_table():
            if isinstance(exc, cls):
                # With ENCLAVE_DEBUG a user error that wraps another failure shows that failure's trace.
                if debug and exc.__cause__ is not None:
                    raise
                print(f"enclave: {describe(exc)}", file=sys.stderr)
                return USER_ERROR_EXIT
        if debug:  # a bug of ours: say so briefly, keep the traceback for ENCLAVE_DEBUG
            raise
        print(f"enclave: internal error ({exc.__class__.__name__}: {exc}); set ENCLAVE_DEBUG=1 for details",
              file=sys.stderr)
        return BUG_EXIT
    return 0


def main() -> None:
    sys.exit(run())
