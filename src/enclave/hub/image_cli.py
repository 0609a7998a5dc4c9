"""`enclave image ...`: build and inspect the notebook image (mounted by `enclave.cli`)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.hub.image import ImageBuildError, ensure_image, show_image

image_app = typer.Typer(help="The notebook image: build it offline.", no_args_is_help=True)

RepoOption = Annotated[Optional[Path], typer.Option(
    "--repo", metavar="DIR", help="Repository root holding enclave_image/ (default: the one enclave runs from).")]


def _fail(exc: Exception) -> None:
    if os.environ.get("ENCLAVE_DEBUG"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(2)


@image_app.command("build")
def build(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the image exists, without Docker's layer cache.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    repo: RepoOption = None,
) -> None:
    """Build the notebook image (Debian base by debootstrap, wheels from the host), unless it exists."""
    try:
        image = ensure_image(repo, force=force)
    except ImageBuildError as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(image.as_dict(), indent=2))
        return
    state = "built" if image.built else "up to date"
    print(f"{image.tag} {state}: {image.id} ({image.size_bytes / 1e6:.0f} MB, {image.seconds:.1f} s)")


@image_app.command("show")
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    repo: RepoOption = None,
) -> None:
    """Say which image these sources make, whether it is built, and which notebook images exist."""
    try:
        info = show_image(repo)
    except ImageBuildError as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(info, indent=2))
        return
    current = info["current"]
    if current["tag"] is None:
        print(f"current: unknown ({current['why']})")
    elif current["exists"]:
        print(f"current: {current['tag']} built: {current['id']} ({current['size_bytes'] / 1e6:.0f} MB, {current['created']})")
    else:
        print(f"current: {current['tag']} not built yet (run `enclave image build`)")
    print(f"base: {info['base']}")
    for image in info["images"]:
        print(f"  {image['id'][:19]}  {', '.join(image['tags']) or '<untagged>'}  "
              f"{image['size_bytes'] / 1e6:.0f} MB  {image['created']}")
