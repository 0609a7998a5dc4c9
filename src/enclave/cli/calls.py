"""`enclave call ...`: calls for applications, their ranked table and the allocation of the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, AsUser, parse_until, print_json, print_rows
from enclave.cli.session import engine, registry
from enclave.registry import awards, calls, people

app = typer.Typer(help="Calls for applications: a window, a token pool, tiers, a rubric and terms.", no_args_is_help=True)

CallSlug = Annotated[str, typer.Argument(metavar="SLUG", help="Call slug.")]


@app.command("open")
def call_open(
    slug: CallSlug,
    title: Annotated[str, typer.Option("--title", help="What the call is for.")],
    closes: Annotated[str, typer.Option("--closes", help="Last day applications are taken (YYYY-MM-DD, UTC).")],
    pool_tokens: Annotated[int, typer.Option("--pool-tokens", help="Model tokens the call awards in all.")],
    tier: Annotated[Optional[list[str]], typer.Option("--tier", help="A tier offered (sample, score, internals, finetune); repeatable (default: sample).")] = None,
    max_award: Annotated[Optional[int], typer.Option("--max-award", help="Most tokens one award may get (besides the tier's cap).")] = None,
    rubric: Annotated[Optional[Path], typer.Option("--rubric", help="Rubric and award policy (default: access/rubric.toml).")] = None,
    terms: Annotated[Optional[Path], typer.Option("--terms", help="Data-use terms applicants accept (default: access/terms.md).")] = None,
    as_: AsUser = None,
) -> None:
    """Open a call for applications."""
    with registry() as s:
        call = calls.open_call(s, as_, slug, title, parse_until(closes, "--closes"), pool_tokens, tier or ["sample"],
                               max_award, rubric, terms)
        typer.echo(f"opened call {call.slug}: {call.pool_tokens} tokens, tiers {call.tiers}, closes after "
                   f"{closes}; terms sha256 {call.terms_sha256}")


@app.command("close")
def call_close(slug: CallSlug, as_: AsUser = None) -> None:
    """Stop taking applications now."""
    with registry() as s:
        calls.close_call(s, as_, slug)
    typer.echo(f"closed call {slug}")


@app.command("show")
def call_show(slug: CallSlug, as_json: AsJson = False,
              terms: Annotated[bool, typer.Option("--terms", help="Print the terms' text (what applicants accept).")] = False) -> None:
    """Show a call, its rubric, and what is left of its pool."""
    with registry() as s:
        call = calls.get_call(s, slug)
        record = {**calls.call_json(call, full=True), "tokens_left": awards.tokens_left(s, call)}
    if terms:
        typer.echo(record["terms"], nl=False)
        return
    if as_json:
        print_json(record)
        return
    for key in ("slug", "title", "state", "accepting", "closes_at", "pool_tokens", "tokens_left", "tiers", "max_award",
                "rubric_version", "rubric_sha256", "terms_sha256"):
        typer.echo(f"{key}: {record[key]}")
    for c in record["rubric"]["rubric"]["criteria"]:
        typer.echo(f"criterion {c['name']} (weight {c['weight']:g}): {c['text']}")


@app.command("list")
def call_list(as_json: AsJson = False) -> None:
    """List calls."""
    with registry() as s:
        records = [calls.call_json(c) for c in calls.list_calls(s)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["slug"], r["state"], "yes" if r["accepting"] else "no", r["closes_at"][:10], r["pool_tokens"],
                     ",".join(r["tiers"]), r["title"]] for r in records],
                   ["slug", "state", "accepting", "closes", "pool", "tiers", "title"])


def _print_plan(rows: list[awards.PlanRow]) -> None:
    print_rows([[r.rank, r.application, r.applicant, r.tier, "-" if r.mean is None else f"{r.mean:.2f}",
                 r.counted, "yes" if r.flagged else "", r.requested, r.recommended, r.outcome, r.note] for r in rows],
               ["rank", "app", "applicant", "tier", "mean", "scores", "flag", "requested", "recommended", "outcome", "note"])


@app.command("rank")
def call_rank(slug: CallSlug, as_json: AsJson = False, as_: AsUser = None) -> None:
    """The ranked table: weighted mean score (1 best), tokens requested and recommended."""
    with registry() as s:
        people.require_role(s, as_)
        rows = awards.plan(s, slug)
    if as_json:
        print_json([r.to_json() for r in rows])
    else:
        _print_plan(rows)


@app.command("allocate")
def call_allocate(
    slug: CallSlug,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be decided; change nothing.")] = False,
    as_json: AsJson = False,
    as_: AsUser = None,
) -> None:
    """Decide every application in review: fund down the ranking until the pool is spent."""
    with engine() as eng:
        rows = awards.allocate(eng, as_, slug, dry_run=dry_run)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    _print_plan(rows)
    if not dry_run:
        typer.echo(f"allocated call {slug}: {sum(r.recommended for r in rows)} tokens in "
                   f"{sum(1 for r in rows if r.recommended)} awards")
