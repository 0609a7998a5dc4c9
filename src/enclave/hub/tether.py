"""Run a command tied to the process that starts it, and marked as one enclave stack's own.

    python -m enclave.hub.tether --parent PID --stack STATE_DIR -- COMMAND [ARGS...]

JupyterHub starts its managed services (and the proxy) in sessions of their own, so when the hub is
killed hard (SIGKILL, the out-of-memory killer) they live on, holding their ports. The tether asks
the kernel to send the command SIGTERM when its parent dies (Linux `PR_SET_PDEATHSIG`; it survives
the exec, and the command keeps the tether's process ID), gives it default SIGINT/SIGTERM handling
(a service started from a background job must not inherit an ignored SIGINT: the hub stops its
services with SIGINT), names the stack in the environment (`ENCLAVE_HUB_STACK`), by which
`enclave up` recognises the enclave's own leftovers, and then execs the command.

Nothing below the hub reads `ENCLAVE_HUB_STACK`; it is a mark on the process, not a setting."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

STACK_MARK = "ENCLAVE_HUB_STACK"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Have the kernel send `sig` to this process when its parent dies; if the parent (`parent`,
    when given) is already gone, send it now. False where the platform has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), sig)
    return True


def command(argv: list[str], *, parent: int, stack: str) -> list[str]:
    """`argv` wrapped in the tether (what the hub's configuration runs)."""
    return [sys.executable, "-m", "enclave.hub.tether", "--parent", str(parent), "--stack", stack, "--", *argv]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parent, stack = None, None
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag in ("--parent", "--stack") and args:
            value = args.pop(0)
            if flag == "--parent":
                parent = int(value)
            else:
                stack = value
        else:
            print(f"enclave-tether: unknown option {flag!r}", file=sys.stderr)
            return 2
    command_line = args[1:]
    if not command_line:
        print("usage: python -m enclave.hub.tether [--parent PID] [--stack DIR] -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    if stack:
        os.environ[STACK_MARK] = stack
    die_with_parent(signal.SIGTERM, parent)
    try:
        os.execvp(command_line[0], command_line)
    except OSError as exc:
        print(f"enclave-tether: cannot run {command_line[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
