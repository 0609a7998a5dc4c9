"""The lock-down policy: the limits an operator may tune, as traitlets (`c.EnclaveLockdown.*`)."""
from __future__ import annotations

import os

from traitlets import Int, Unicode
from traitlets.config import LoggingConfigurable


class EnclaveLockdown(LoggingConfigurable):
    """Browser-egress limits of a single-user server in the enclave.

    A browser can always show what it displays, so these limits stop bulk transfer around output
    review, not viewing: a scholar still opens and edits ordinary files and notebooks.
    """

    max_read_bytes = Int(
        1_000_000,
        config=True,
        help="""Largest response, in bytes, that the contents API (and, as a backstop, any other
        non-static route) may send to the browser. Larger files must be read in a kernel or leave
        through output review.""",
    )

    max_output_bytes = Int(
        1_000_000,
        config=True,
        help="""Largest single kernel message or saved notebook output, in bytes, that reaches the
        browser. A larger one is replaced by a notice saying it was withheld.""",
    )

    max_notebook_bytes = Int(
        50_000_000,
        config=True,
        help="""Largest notebook file, in bytes, that the server parses to withhold oversized
        outputs before sending it. Larger notebooks are refused unread, so a kernel cannot make
        the server load an arbitrarily large file into memory.""",
    )

    datasets_dir = Unicode(
        "datasets",
        config=True,
        help="""Where the project's confidential datasets are mounted: relative to the server's
        root directory, or absolute. Files under it are readable from kernels only; the contents
        API lists the directory but never returns a file's content.""",
    )

    def datasets_path(self, root_dir: str) -> str:
        """The datasets directory as a resolved filesystem path (symlinks followed)."""
        return os.path.realpath(os.path.join(root_dir, os.path.expanduser(self.datasets_dir)))
