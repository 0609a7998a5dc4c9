"""`enclave review ...` and `enclave release ...`: mounted by `enclave.cli`."""
from __future__ import annotations

import typer

from enclave.review.scan_cli import scan_command

review_app = typer.Typer(help="Output review: automated checks and the reviewer's decisions.", no_args_is_help=True)
release_app = typer.Typer(help="Released exports: verify signed manifests.", no_args_is_help=True)

review_app.command("scan")(scan_command)
