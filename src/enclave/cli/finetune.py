"""`enclave finetune ...`: DP fine-tuning of a project's GPT-2 on one of its datasets (Opacus), in
the foreground with a progress bar; `enclave finetune list|show ID` for the jobs on the record
(the CLI's and the ones notebooks queued through the privacy service), with everything an
operator needs (loss, membership report, paths, why a job failed); `enclave finetune fail ID
--reason ...` closes a job no process will finish."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli import login
from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.session import engine, registry
from enclave.envsettings import enclave_home
from enclave.errors import BadInput
from enclave.privacy import finetune, jobs
from enclave.privacy.canaries import REPEATS
from enclave.registry import finetunes

app = typer.Typer(help="DP fine-tuning of GPT-2 on a project's dataset (Opacus), its canary and membership audits.",
                  invoke_without_command=True)
_DEFAULTS = finetune.FinetuneParams(epsilon=1.0, delta=0.0)
OVERRIDE_PASSWORD_ENV = "ENCLAVE_OVERRIDE_PASSWORD"


@app.callback()
def finetune_run(
    ctx: typer.Context,
    project: Annotated[Optional[str], typer.Option("--project", metavar="SLUG", help="The project whose budget pays.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", metavar="NAME", help="A registered dataset the project may use.")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="The fine-tune's privacy target (charged to the ledger).")] = None,
    delta: Annotated[Optional[float], typer.Option("--delta", help="The fine-tune's delta; below 1/n for n training records.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", metavar="MODEL", help="A catalog model to start from (default: the gateway's default model).")] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = _DEFAULTS.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Expected batch size (Poisson sampling).")] = _DEFAULTS.batch_size,
    learning_rate: Annotated[float, typer.Option("--lr")] = _DEFAULTS.learning_rate,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Per-record gradient clipping bound.")] = _DEFAULTS.max_grad_norm,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per record.")] = _DEFAULTS.max_length,
    accountant: Annotated[str, typer.Option("--accountant", help="Opacus accountant: prv or rdp.")] = _DEFAULTS.accountant,
    mode: Annotated[str, typer.Option("--grad-sample-mode", help="hooks, or ghost (ghost clipping; unties lm_head).")] = _DEFAULTS.grad_sample_mode,
    train_embeddings: Annotated[bool, typer.Option("--train-embeddings", help="Also train the token and position embeddings.")] = False,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of records kept out of training for the membership audit.")] = _DEFAULTS.holdout,
    max_records: Annotated[Optional[int], typer.Option("--max-records", help="Use only the first N records.")] = None,
    canaries_per_repeat: Annotated[int, typer.Option("--canaries", help=f"Canaries planted per repetition count ({', '.join(map(str, REPEATS))}).")] = _DEFAULTS.canaries_per_repeat,
    candidates: Annotated[int, typer.Option("--canary-candidates", help="Random secrets each canary is ranked against.")] = _DEFAULTS.canary_candidates,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    non_private: Annotated[bool, typer.Option("--non-private", help="Train without DP (needs --override-by).")] = False,
    override_by: Annotated[Optional[str], typer.Option("--override-by", metavar="OPERATOR", help="The operator who allows a non-private fine-tune (recorded; their own password is asked).")] = None,
    override_password_file: Annotated[Optional[Path], typer.Option("--override-password-file", metavar="FILE", dir_okay=False, help=f"The overriding operator's password file (mode 0600). Without it: ${OVERRIDE_PASSWORD_ENV}, else a prompt.")] = None,
    as_json: AsJson = False,
    as_: AsUser = None,
) -> None:
    """Fine-tune the project's GPT-2 on a dataset with DP-SGD, register the model (served to the
    project only), and report its canary exposure and membership-inference audit.

    Charged to the project's privacy ledger when training starts (kept if it fails)."""
    if ctx.invoked_subcommand is not None:
        return
    if project is None and dataset is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if not project or not dataset:
        raise BadInput("give both --project SLUG and --dataset NAME")
    if non_private:
        if epsilon is not None:
            raise BadInput("--non-private trains without DP: leave out --epsilon")
    elif epsilon is None or delta is None:
        raise BadInput("give --epsilon and --delta (or --non-private --override-by OPERATOR)")
    params = finetune.FinetuneParams(
        epsilon=None if non_private else epsilon, delta=0.0 if non_private else delta, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, max_grad_norm=max_grad_norm, max_length=max_length,
        accountant=accountant, grad_sample_mode=mode, train_embeddings=train_embeddings, holdout=holdout,
        max_records=max_records, canaries_per_repeat=canaries_per_repeat, canary_candidates=candidates, seed=seed,
        device=device)
    home = enclave_home()
    with engine() as db:
        if non_private and override_by:
            # A fine-tune without a guarantee is the operator's decision, not a name typed after it.
            login.require_password(db, override_by, override_password_file,
                                   f"overriding DP for a fine-tune of project {project!r}",
                                   env_name=OVERRIDE_PASSWORD_ENV, option="--override-password-file",
                                   failed_action="finetune.override_login_failed")
        job_id = jobs.submit(db, lambda s: finetunes.operator_access(s, as_, project), via="cli", dataset=dataset,
                             epsilon=epsilon, delta=delta, base=base, params=params,
                             default_dir=jobs.default_model_dir(home),
                             non_private=non_private, override_by=override_by)
        if not as_json:
            typer.echo(f"fine-tune job {job_id}: project {project}, dataset {dataset}, "
                       + ("NON-PRIVATE (override by " + str(override_by) + ")" if non_private
                          else f"epsilon {epsilon:g}, delta {delta:g}"), err=True)
        bar = _ProgressBar(disabled=as_json)
        try:
            out = jobs.execute(db, job_id, home=home, default_dir=jobs.default_model_dir(home),
                               on_progress=bar.update)
        finally:
            bar.close()
    if as_json:
        print_json(out)
    else:
        _print_job(out)
    if out["status"] != "done":
        raise typer.Exit(1)


class _ProgressBar:
    def __init__(self, *, disabled: bool) -> None:
        self.disabled = disabled
        self.bar = None

    def update(self, p: finetune.Progress) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=p.total, desc="DP fine-tune", unit="step")
        self.bar.n = p.step
        self.bar.set_postfix(loss=f"{p.loss:.3f}" if p.loss is not None else "-",
                             epsilon=f"{p.epsilon:.2f}" if p.epsilon is not None else "-", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_job(out: dict) -> None:
    privacy = ("NON-PRIVATE (override by " + str(out["override_by"]) + ")" if out["non_private"]
               else f"epsilon {out['epsilon']:g}, delta {out['delta']:g}")
    progress = out["progress"]
    typer.echo(f"job {out['id']}: {out['status']} - project {out['project']}, dataset {out['dataset']}, base "
               f"{out['base_model']}, {privacy}")
    spent = progress["epsilon_spent"]
    loss = progress["loss"]
    typer.echo(f"progress: step {progress['step']}/{progress['total']}, loss "
               f"{'-' if loss is None else f'{loss:.4f}'}, epsilon spent {'-' if spent is None else f'{spent:.3f}'}")
    if out["spend"]:
        typer.echo(f"charged: spend {out['spend']}")
    if out["model"]:
        typer.echo(f"model: {out['model']}" + (f" ({out['model_dir']})" if out["model_dir"] else ""))
    if out["message"]:
        typer.echo(out["message"])
    if out.get("exposure"):
        for line in finetune.summary_lines(out["exposure"], out.get("membership") or {}):
            typer.echo(line)


@app.command("list")
def finetune_list(
    project: Annotated[Optional[str], typer.Option("--project", metavar="SLUG", help="Only this project's jobs.")] = None,
    as_json: AsJson = False,
) -> None:
    """Every fine-tune job, oldest first, with its progress."""
    with registry() as s:
        rows = [finetunes.job_json(s, j, reports=False) for j in finetunes.jobs(s, project)]
    if as_json:
        print_json(rows)
        return
    print_rows([[r["id"], r["project"], r["dataset"], r["status"],
                 "non-private" if r["non_private"] else f"{r['epsilon']:g}",
                 f"{r['progress']['step']}/{r['progress']['total']}",
                 "" if r["progress"]["epsilon_spent"] is None else f"{r['progress']['epsilon_spent']:.3f}",
                 r["model"] or "", (r["created_at"] or "")[:19]] for r in rows],
               ["JOB", "PROJECT", "DATASET", "STATUS", "EPSILON", "STEP", "SPENT", "MODEL", "CREATED"],
               caps=[16, 20, 24, 8, 11, 11, 8, 40, 19])


@app.command("show")
def finetune_show(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job.")],
    as_json: AsJson = False,
) -> None:
    """One job: its settings, progress, charge, model and audit reports (canary exposure table,
    membership inference)."""
    with registry() as s:
        out = finetunes.job_json(s, finetunes.get(s, job_id))
    if as_json:
        print_json(out)
    else:
        _print_job(out)


@app.command("fail")
def finetune_fail(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the job and in the audit log).")],
    as_: AsUser = None,
) -> None:
    """End a queued or running job that no process will finish (e.g. left running by a killed
    `enclave finetune`). Its privacy charge, if it started, stays on the ledger."""
    with registry() as s:
        job = finetunes.operator_fail(s, as_, job_id, reason)
        message = job.message
    typer.echo(f"job {job_id} failed: {message}")
