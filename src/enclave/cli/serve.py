"""`enclave serve ...` and `enclave up`: run the enclave's services.

Each service comes with its own extra ([gateway], [review], [hub]), so its modules are imported by
the command that runs it: the other commands work without them.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.models import demo_build
from enclave.cli.session import engine
from enclave.envsettings import enclave_home, env_str
from enclave.errors import BadInput
from enclave.registry.db import check_schema, make_engine, upgrade

app = typer.Typer(help="Run the enclave's services.", no_args_is_help=True)

PublicUrl = Annotated[str, typer.Option(help="Where browsers reach the hub.")]


def up(
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the services after set-up (Ctrl-C stops them).")] = True,
    unisolated: Annotated[bool, typer.Option("--unisolated", help="Developer mode without Docker: notebooks are local processes with NO isolation.")] = False,
    public_url: PublicUrl = "http://127.0.0.1:8000",
) -> None:
    """Bring up the embedded enclave: registry, demo people, project and data, the demo models in the
    catalog, notebook image, then JupyterHub with the gateway, review, warden and idle culler."""
    from enclave.demo import large as large_demo
    from enclave.demo.seed import (ACCESS_PEOPLE, DEMO_PEOPLE, LARGE_MODEL, seed_demo, seed_demo_call,
                                   seed_demo_dataset, seed_demo_models)
    from enclave.hub.launch import reset_passwords, serve_hub

    home = enclave_home()
    with engine(checked=False) as eng:
        upgrade(eng)
        for line in seed_demo(eng):
            typer.echo(line)
        demo = demo_build(None, force=False)
        for line in seed_demo_dataset(eng, demo.people_csv):
            typer.echo(line)
        for line in seed_demo_call(eng):
            typer.echo(line)
        large = large_demo.build_large_demo(home / "demo" / LARGE_MODEL)
        for line in seed_demo_models(eng, demo.model_dir, large, demo.read_manifest(), large_demo.read_manifest(large)):
            typer.echo(line)
        demo_logins = [username for username, _, _ in DEMO_PEOPLE] + [username for username, *_ in ACCESS_PEOPLE]
        logins = reset_passwords(eng, demo_logins) if serve else {}
    typer.echo(f"demo model: {demo.model_dir}")
    if serve:
        serve_hub(unisolated=unisolated, public_url=public_url, model_dir=str(demo.model_dir), log_dir=home / "logs",
                  logins=logins, progress=typer.echo)


@app.command("review")
def serve_review_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8002,
) -> None:
    """Serve the output-review airlock (submissions, reviewer UI, releases) until interrupted."""
    from enclave.review.app import serve_review
    from enclave.review.settings import ReviewSettings

    serve_review(host, port, ReviewSettings.from_env())


@app.command("privacy")
def serve_privacy_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8004,
) -> None:
    """Serve differentially private statistics over registered datasets, charged to each
    project's privacy budget, until interrupted."""
    from enclave.privacy.app import serve_privacy
    from enclave.privacy.settings import PrivacySettings

    serve_privacy(host, port, PrivacySettings.from_env())


@app.command("access")
def serve_access_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8005,
) -> None:
    """Serve the access-by-application pages (applicants apply, panel members declare and score)
    until interrupted."""
    from enclave.access.app import serve_access
    from enclave.access.settings import AccessSettings

    serve_access(host, port, AccessSettings.from_env())


@app.command("hub")
def serve_hub_cmd(
    unisolated: Annotated[bool, typer.Option("--unisolated", help="Developer mode without Docker: NO isolation.")] = False,
    public_url: PublicUrl = "http://127.0.0.1:8000",
    model: Annotated[Optional[str], typer.Option("--model", help="GPT-2 model directory for the gateway (default: $ENCLAVE_MODEL_DIR).")] = None,
) -> None:
    """Run JupyterHub with the enclave's authenticator and spawner, and the gateway, review,
    warden and idle culler as its services (Ctrl-C stops everything)."""
    from enclave.hub.launch import serve_hub

    serve_hub(unisolated=unisolated, public_url=public_url, model_dir=model or env_str("ENCLAVE_MODEL_DIR", ""),
              log_dir=enclave_home() / "logs", progress=typer.echo)


@app.command("gateway")
def serve_gateway_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    model: Annotated[Optional[str], typer.Option("--model", help="GPT-2 model directory (default: $ENCLAVE_MODEL_DIR).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Serve the model API (generate, score, next-token, usage) until interrupted."""
    import uvicorn

    from enclave.gateway.app import create_app
    from enclave.gateway.engine import Engine
    from enclave.gateway.model import ModelLoadError, load_model
    from enclave.gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env(model_dir=model, device=device)
    db = make_engine(settings.db_url)
    try:
        check_schema(db)  # refuse to start on a registry that is missing or behind
    finally:
        db.dispose()
    try:
        loaded = load_model(settings.model_dir, device=settings.device)
    except ModelLoadError as exc:
        raise BadInput(str(exc)) from None
    batcher = Engine(loaded, max_batch=settings.max_batch, max_queue=settings.max_queue,
                     kernel_settings=settings.kernels)
    batcher.start()
    try:
        uvicorn.run(create_app(settings, engine=batcher), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        batcher.close()
