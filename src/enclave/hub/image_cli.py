"""`enclave image ...`: mounted by `enclave.cli`; placeholder until the image builder lands."""
from __future__ import annotations

import typer

image_app = typer.Typer(help="The notebook image: build it offline.", no_args_is_help=True)
