"""`enclave model ...`: the demo GPT-2 and its synthetic confidential data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.demo.model import DemoPaths, build_demo
from enclave.envsettings import enclave_home

app = typer.Typer(help="Models: build the demo GPT-2.", no_args_is_help=True)


def demo_build(out: Path | None, force: bool) -> DemoPaths:
    """The demo under `out` (default $ENCLAVE_HOME/demo), built or reused from its cache."""
    return build_demo(out or enclave_home() / "demo", progress=True, force=force)


@app.command("build-demo")
def model_build_demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write it (default: $ENCLAVE_HOME/demo).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching build is cached.")] = False,
) -> None:
    """Build the synthetic confidential dataset and a small GPT-2 trained on it (cached)."""
    demo = demo_build(out, force)
    typer.echo(f"demo model: {demo.model_dir}")
    typer.echo(f"demo data:  {demo.people_csv}")
