"""`enclave grant ...`: what a project may consume."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, AsUser, Slug, print_json
from enclave.cli.session import registry
from enclave.errors import BadInput
from enclave.registry import grants

app = typer.Typer(help="What a project may consume: tokens, rate, privacy budget, compute, exports.", no_args_is_help=True)


@app.command("set")
def grant_set(
    slug: Slug,
    tokens: Annotated[Optional[int], typer.Option("--tokens", help="Model tokens in total.")] = None,
    tokens_per_day: Annotated[Optional[int], typer.Option("--tokens-per-day", help="Model tokens per UTC day.")] = None,
    rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute.")] = None,
    max_tokens_per_request: Annotated[Optional[int], typer.Option("--max-tokens-per-request", help="Largest single request.")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="Differential-privacy budget epsilon.")] = None,
    delta: Annotated[Optional[float], typer.Option("--delta", help="Differential-privacy budget delta.")] = None,
    cpu: Annotated[Optional[float], typer.Option("--cpu", help="CPUs per notebook.")] = None,
    mem: Annotated[Optional[str], typer.Option("--mem", help="Memory per notebook, e.g. 4G.")] = None,
    session_hours: Annotated[Optional[float], typer.Option("--session-hours", help="Longest notebook session.")] = None,
    export_bytes: Annotated[Optional[int], typer.Option("--export-bytes", help="Bytes the project may export in total.")] = None,
    logprob_calls_per_day: Annotated[Optional[int], typer.Option("--logprob-calls-per-day", help="Calls returning probabilities (score, next-token) per day.")] = None,
    view_bytes_per_day: Annotated[Optional[str], typer.Option("--view-bytes-per-day", help="Bytes the project's notebooks may send to browsers per UTC day, e.g. 128M (counted on the host; a session that spends it is stopped).")] = None,
    work_bytes: Annotated[Optional[str], typer.Option("--work-bytes", help="Size limit of each member's work volume, e.g. 2G.")] = None,
    tier: Annotated[Optional[str], typer.Option("--tier", help=f"What the model API allows: {', '.join(grants.TIERS)} (each includes the ones before it; new grants get {grants.DEFAULT_TIER}).")] = None,
    activation_bytes_per_day: Annotated[Optional[str], typer.Option("--activation-bytes-per-day", help="Bytes of activations (float16) the project may read per UTC day at the internals tier, e.g. 16M.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", metavar="NAME", help=f"With --tier (and nothing else): the project's tier for this model alone; {grants.INHERIT} gives it the grant's tier again.")] = None,
    as_: AsUser = None,
) -> None:
    """Create or change a project's grant; unset fields keep their values."""
    if model is not None:
        others = [tokens, tokens_per_day, rpm, max_tokens_per_request, epsilon, delta, cpu, mem, session_hours,
                  export_bytes, logprob_calls_per_day, view_bytes_per_day, work_bytes, activation_bytes_per_day]
        if tier is None or any(v is not None for v in others):
            raise BadInput("--model sets the project's tier for one model: give --tier and nothing else with it")
        with registry() as s:
            now = grants.set_model_tier(s, as_, slug, model, tier)
        typer.echo(f"grant for {slug}: tier {now} for model {model}")
        return
    with registry() as s:
        grant = grants.set_grant(
            s, as_, slug, tokens_total=tokens, tokens_per_day=tokens_per_day, requests_per_minute=rpm,
            max_tokens_per_request=max_tokens_per_request, epsilon=epsilon, delta=delta, cpu=cpu,
            mem_bytes=grants.parse_size(mem) if mem is not None else None, session_hours=session_hours,
            export_bytes=export_bytes, logprob_calls_per_day=logprob_calls_per_day,
            view_bytes_per_day=grants.parse_size(view_bytes_per_day) if view_bytes_per_day is not None else None,
            work_bytes=grants.parse_size(work_bytes) if work_bytes is not None else None,
            tier=tier,
            activation_bytes_per_day=(grants.parse_size(activation_bytes_per_day)
                                      if activation_bytes_per_day is not None else None),
        )
        record = grants.grant_json(grant)
    typer.echo(f"grant for {slug}: " + ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("mem_bytes", "view_bytes_per_day", "work_bytes", "activation_bytes_per_day",
                                                                          "updated_at", "updated_by")))


@app.command("show")
def grant_show(slug: Slug, as_json: AsJson = False) -> None:
    """Show a project's grant (with its tiers for particular models, where they differ)."""
    with registry() as s:
        grant = grants.get_grant(s, slug)
        record = {**grants.grant_json(grant), "model_tiers": grants.model_tiers(s, grant.project_id)}
    if as_json:
        print_json(record)
    else:
        for key, value in record.items():
            typer.echo(f"{key}: {value}")
