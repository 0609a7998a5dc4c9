"""`enclave image ...`: build and inspect the notebook image."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, print_json
from enclave.errors import Unavailable
from enclave.hub.image import ImageBuildError, ensure_image, show_image

app = typer.Typer(help="The notebook image: build it offline.", no_args_is_help=True)

RepoOption = Annotated[Optional[Path], typer.Option(
    "--repo", metavar="DIR", help="Repository root holding enclave_image/ (default: the one enclave runs from).")]


@app.command("build")
def build(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the image exists, without Docker's layer cache.")] = False,
    as_json: AsJson = False,
    repo: RepoOption = None,
) -> None:
    """Build the notebook image (Debian base by debootstrap, wheels from the host), unless it exists."""
    try:
        image = ensure_image(repo, force=force)
    except ImageBuildError as exc:
        raise Unavailable(str(exc)) from exc
    if as_json:
        print_json(image.as_dict())
        return
    state = "built" if image.built else "up to date"
    typer.echo(f"{image.tag} {state}: {image.id} ({image.size_bytes / 1e6:.0f} MB, {image.seconds:.1f} s)")


@app.command("show")
def show(as_json: AsJson = False, repo: RepoOption = None) -> None:
    """Say which image these sources make, whether it is built, and which notebook images exist."""
    try:
        info = show_image(repo)
    except ImageBuildError as exc:
        raise Unavailable(str(exc)) from exc
    if as_json:
        print_json(info)
        return
    current = info["current"]
    if current["tag"] is None:
        typer.echo(f"current: unknown ({current['why']})")
    elif current["exists"]:
        typer.echo(f"current: {current['tag']} built: {current['id']} ({current['size_bytes'] / 1e6:.0f} MB, {current['created']})")
    else:
        typer.echo(f"current: {current['tag']} not built yet (run `enclave image build`)")
    typer.echo(f"base: {info['base']}")
    for image in info["images"]:
        typer.echo(f"  {image['id'][:19]}  {', '.join(image['tags']) or '<untagged>'}  "
                   f"{image['size_bytes'] / 1e6:.0f} MB  {image['created']}")
