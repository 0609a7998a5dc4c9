"""`enclave review scan PATH...`: every automated check, offline, on files or folders.

Exit status: 0 when the verdict is pass or review, 1 when it is block, 2 when the scan could not
run (a missing path, a bad policy file, an unusable --protect or --model): one line on stderr.
Folders are walked; symbolic links and special files are never followed or read (they are
findings), and files over the policy's size limit are refused by their size, unread.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.review.scan.findings import Finding, Severity, verdict

_SEVERITY_ORDER = {"block": 0, "warn": 1, "info": 2}


def _fail(message: str) -> None:
    print(f"enclave: {message}", file=sys.stderr)
    raise typer.Exit(2)


def collect(paths: list[Path], max_bytes: int):
    """(ExportFiles, findings about what was not read) for the paths given on the command line."""
    from enclave.review.scan import ExportFile

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
            _fail(f"no such file or folder: {given}")
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


def _table(report, out) -> None:
    findings = sorted(report.findings, key=lambda f: (_SEVERITY_ORDER[f.severity.value], f.file))
    if findings:
        header = ["SEVERITY", "CHECK", "FILE", "LOCATION", "MESSAGE"]
        rows = [[f.severity.value, f.check, f.file, f.location, f.message] for f in findings]
        widths = [min(max(len(r[i]) for r in [header, *rows]), cap) for i, cap in enumerate((8, 16, 40, 40, 10_000))]
        for row in [header, *rows]:
            cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths)]
            out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() + "\n")
        out.write("\n")
    counts = {s: sum(f.severity.value == s for f in report.findings) for s in ("block", "warn", "info")}
    out.write(f"verdict: {report.verdict.value} ({len(report.files)} file(s) scanned; "
              f"{counts['block']} block, {counts['warn']} warn, {counts['info']} info; policy {report.policy_version})\n")


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
    from enclave.review.scan.policy import PolicyError, load_policy
    from enclave.review.scan import build_context, scan_files
    from enclave.review.scan.scoring import ScorerError, has_tokenizer, local_scorer

    try:
        policy = load_policy(policy_file)
    except PolicyError as exc:
        _fail(str(exc))
    for path in protect or []:
        if not path.exists():
            _fail(f"--protect: no such file or folder: {path}")
    scorer = None
    for directory in model or []:
        if not directory.is_dir():
            _fail(f"--model: not a folder: {directory}")
        from enclave.review.scan.fingerprint import weight_files

        if not weight_files(directory):
            _fail(f"--model: no weights (*.safetensors, pytorch_model*.bin) in {directory}")
        if scorer is None and has_tokenizer(directory):
            try:
                scorer = local_scorer(directory)
            except ScorerError as exc:
                _fail(f"--model: {exc}")
    files, refused = collect(list(paths), policy.files.max_file_bytes)
    context = build_context(None, None, protect_files=list(protect or []), model_dirs=list(model or []), scorer=scorer)
    try:
        report = scan_files(files, policy, context)
    except Exception as exc:  # the pipeline reports check failures itself; this is a bug of ours
        if os.environ.get("ENCLAVE_DEBUG"):
            raise
        _fail(f"the scan failed ({exc.__class__.__name__}: {exc})")
    if refused:
        from dataclasses import replace

        findings = refused + report.findings
        report = replace(report, findings=findings, verdict=verdict(findings))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _table(report, sys.stdout)
    raise typer.Exit(1 if report.verdict.value == "block" else 0)
