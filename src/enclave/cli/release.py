"""`enclave release ...`: check a released export's signed manifest, anywhere, offline."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, print_json

app = typer.Typer(help="Released exports: verify signed manifests.", no_args_is_help=True)


@app.command("verify")
def release_verify(
    manifest: Annotated[Path, typer.Argument(metavar="MANIFEST", help="A release's manifest.json (or its directory).")],
    key: Annotated[Optional[Path], typer.Option("--key", help="The review service's public key (PEM), as published "
                                                "at /services/review/api/release-key. Default: the copy next to the manifest.")] = None,
    as_json: AsJson = False,
) -> None:
    """Check a release's signature and every file's SHA-256. Exit 0: verified; 1: something does not
    match (each problem is printed); 2: the manifest cannot be checked at all."""
    from enclave.review.release import verify  # cryptography: the [review] extra

    result = verify(manifest, key)
    if as_json:
        print_json({"ok": result.ok, "key_id": result.key_id, "key_source": result.key_source, "files": result.files,
                    "problems": result.problems})
    else:
        typer.echo(result.summary(), err=not result.ok)
        for problem in result.problems:
            typer.echo(f"  {problem}", err=True)
        if result.ok and key is None:
            typer.echo("  note: checked against the key shipped with the release; pass --key with the service's "
                       "published key to rule out a replaced key")
    if not result.ok:
        raise typer.Exit(1)
