"""`enclave review scan PATH...`: every automated check, offline, on files or folders.

Exit status: 0 when the verdict is pass or review, 1 when it is block, 2 when the scan could not
run (a missing path, a bad policy file, an unusable --protect or --model): one line on stderr.
Folders are walked; symbolic links and special files are never followed or read (they are
findings), and files over the policy's size limit are refused by their size, unread.

The scan library (numpy, pandas, Presidio: the [review] extra) is imported by the command itself.
"""
from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import print_json, print_rows
from enclave.envsettings import enclave_home, env_str
from enclave.errors import BadInput

_SEVERITY_ORDER = {"block": 0, "warn": 1, "info": 2}
# Widest SEVERITY, CHECK, FILE, LOCATION and MESSAGE columns of the table; longer cells are cut.
_COLUMN_CAPS = (8, 16, 40, 40, 10_000)


def collect(paths: list[Path], max_bytes: int):
    """(ExportFiles, findings about what was not read) for the paths given on the command line."""
    from enclave.review.scan import ExportFile
    from enclave.review.scan.findings import Finding, Severity

    files: list[ExportFile] = []
    findings: list[Finding] = []

    def refuse(name: str, why: str) -> None:
        findings.append(Finding("file_policy", Severity.block, name, "whole file", why, {}))

    def add(path: Path, name: str) -> None:
        try:
            info = path.lstat()
        except OSError as exc:
            refuse(name, f"cannot be read ({exc.strerror})")
            return
        if stat.S_ISLNK(info.st_mode):
            refuse(name, f"a symbolic link (to {os.readlink(path)!r}); links are not followed or exported")
        elif not stat.S_ISREG(info.st_mode):
            refuse(name, "a device, pipe, socket or other special file; not read")
        else:
            try:
                files.append(ExportFile.from_path(path, name, max_bytes))
            except OSError as exc:
                refuse(name, f"cannot be read ({exc.strerror})")

    for given in paths:
        if not given.exists() and not given.is_symlink():
            raise BadInput(f"no such file or folder: {given}")
        if given.is_dir() and not given.is_symlink():
            root = given.name or given.resolve().name
            for folder, dirs, names in os.walk(given, followlinks=False):
                dirs.sort()
                for entry in sorted(names) + sorted(d for d in dirs if (Path(folder) / d).is_symlink()):
                    path = Path(folder) / entry
                    add(path, str(Path(root) / path.relative_to(given)))
        else:
            add(given, str(given))
    return files, findings


def _print_table(report) -> None:
    findings = sorted(report.findings, key=lambda f: (_SEVERITY_ORDER[f.severity.value], f.file))
    if findings:
        print_rows([[f.severity.value, f.check, f.file, f.location, f.message] for f in findings],
                   ["SEVERITY", "CHECK", "FILE", "LOCATION", "MESSAGE"], caps=_COLUMN_CAPS)
        typer.echo("")
    counts = {s: sum(f.severity.value == s for f in report.findings) for s in ("block", "warn", "info")}
    typer.echo(f"verdict: {report.verdict.value} ({len(report.files)} file(s) scanned; "
               f"{counts['block']} block, {counts['warn']} warn, {counts['info']} info; policy {report.policy_version})")
    # Say which bytes no check read: left to a reviewer's eyes, or unexamined (a block).
    for c in report.coverage:
        if c.human or c.unexamined:
            typer.echo(f"coverage {c.name}: {c.checked:,} bytes read by checks, {c.human:,} for human eyes, "
                       f"{c.unexamined:,} unexamined")


def _scorer_for(model_dirs: list[Path]):
    """Check each --model directory; the first one with a tokenizer scores passages."""
    from enclave.review.scan.fingerprint import weight_files
    from enclave.review.scan.scoring import ScorerError, has_tokenizer, local_scorer

    scorer = None
    for directory in model_dirs:
        if not directory.is_dir():
            raise BadInput(f"--model: not a folder: {directory}")
        if not weight_files(directory):
            raise BadInput(f"--model: no weights (*.safetensors, pytorch_model*.bin) in {directory}")
        if scorer is None and has_tokenizer(directory):
            try:
                scorer = local_scorer(directory)
            except ScorerError as exc:
                raise BadInput(f"--model: {exc}") from None
    return scorer


def scan_command(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Files or folders to scan (folders are walked).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: verdict and findings.")] = False,
    policy_file: Annotated[Optional[Path], typer.Option("--policy", metavar="FILE",
                                                        help="Policy file (default: output_review/policy.toml).")] = None,
    protect: Annotated[Optional[list[Path]], typer.Option(
        "--protect", metavar="FILE",
        help="Protected data (text, or CSV whose columns are its quasi-identifiers). Repeatable.")] = None,
    model: Annotated[Optional[list[Path]], typer.Option(
        "--model", metavar="DIR",
        help="A Hugging Face model directory: its weights are fingerprinted; with a tokenizer, it also "
             "scores passages for memorisation. Repeatable.")] = None,
) -> None:
    """Run every automated disclosure check on files, offline. Exit 0 pass/review, 1 block, 2 error."""
    # This command is a start-up of its own and may load a --model: the model hub must never be
    # tried, and transformers reads this when it is first imported (the scan library sets nothing).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from enclave.review.scan import DEFAULT_POLICY, ScanCache, load_policy, scan_files
    from enclave.review.scan.findings import verdict
    from enclave.review.scan.policy import PolicyError
    from enclave.review.scan_context import build_scan_context

    try:
        policy = load_policy(policy_file or env_str("ENCLAVE_REVIEW_POLICY") or DEFAULT_POLICY)
    except PolicyError as exc:
        raise BadInput(str(exc)) from None
    for path in protect or []:
        if not path.exists():
            raise BadInput(f"--protect: no such file or folder: {path}")
    scorer = _scorer_for(list(model or []))
    files, refused = collect(list(paths), policy.files.max_file_bytes)
    context = build_scan_context(None, None, protect_files=list(protect or []), model_dirs=list(model or []),
                                 scorer=scorer, cache=ScanCache(disk_dir=enclave_home() / "cache" / "review"))
    try:
        report = scan_files(files, policy, context)
    except Exception as exc:  # the pipeline reports check failures itself; this is a bug of ours
        # (with ENCLAVE_DEBUG, `enclave.cli.run` shows the traceback of the failure chained here)
        raise BadInput(f"the scan failed ({exc.__class__.__name__}: {exc})") from exc
    if refused:
        findings = refused + report.findings
        report = replace(report, findings=findings, verdict=verdict(findings))
    if as_json:
        print_json(report.to_json())
    else:
        _print_table(report)
    raise typer.Exit(1 if report.verdict.value == "block" else 0)
