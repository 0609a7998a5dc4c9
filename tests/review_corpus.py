"""Builders for the output-review tests: exports, protected data, a tiny GPT-2, fake identifiers.

Everything is generated from seeds, so a failing case can be rebuilt exactly.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from enclave.demo import data
from enclave.review.scan import DEFAULT_POLICY, ExportFile, ScanCache, ScanContext, ScanReport, load_policy, scan_files

POLICY = load_policy(DEFAULT_POLICY)
# Shared by the scans of a test run, as the review service shares one per process: the tiny
# model's fingerprint and the Presidio analyser are built once. Memory only.
CACHE = ScanCache()


@pytest.fixture(scope="session", autouse=True)
def review_home(tmp_path_factory):
    """Whatever defaults to $ENCLAVE_HOME (the CLI's scan cache, say) goes to a temporary one, never ./var."""
    import os

    home = tmp_path_factory.mktemp("review-home")
    saved = os.environ.get("ENCLAVE_HOME")
    os.environ["ENCLAVE_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("ENCLAVE_HOME", None)
    else:
        os.environ["ENCLAVE_HOME"] = saved


def build_tiny_gpt2(folder: Path, seed: int = 0, vocab_size: int = 1000, n_embd: int = 64) -> Path:
    """A small random GPT-2 saved as safetensors (weights only: no tokenizer)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_embd=n_embd, n_layer=2, n_head=2, vocab_size=vocab_size, n_positions=128))
    model.save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("review-tiny-gpt2"))


def wte(model_dir: Path):
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))["transformer.wte.weight"]


def people(n: int = 300, seed: int = 7) -> list[data.Person]:
    return data.generate_people(n, seed)


def people_csv(folder: Path, n: int = 300, seed: int = 7, columns: list[str] | None = None,
               header: list[str] | None = None) -> Path:
    """A protected dataset: people with their quasi-identifiers (only `columns`, if given, under the
    column names `header` if given: a registry's dataset need not name them as the demo does)."""
    path = folder / "people.csv"
    rows = people(n, seed)
    if columns is None:
        data.write_csv(rows, path)
    else:
        lines = [",".join(header or columns)] + [",".join(str(getattr(p, c)) for c in columns) for p in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fake_ssns(n: int, seed: int = 1) -> list[str]:
    """SSNs in the issued ranges (area 001-899 except 666, group 01-99, serial 0001-9999)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        area = rng.randint(1, 899)
        if area == 666:
            continue
        out.append(f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}")
    return out


def zip_bytes(members: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes | str], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, content in members.items():
            raw = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


def notebook(*cells: dict) -> bytes:
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": list(cells)}).encode()


def code_cell(source: str, *outputs: dict) -> dict:
    return {"cell_type": "code", "source": source, "metadata": {}, "execution_count": 1, "outputs": list(outputs)}


def stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def result(data: dict) -> dict:
    return {"output_type": "execute_result", "execution_count": 1, "metadata": {}, "data": data}


def scan(files: dict[str, bytes | str], policy=None, **context) -> ScanReport:
    exported = [ExportFile(name, content.encode() if isinstance(content, str) else content)
                for name, content in files.items()]
    return scan_files(exported, policy or POLICY, ScanContext(**{"cache": CACHE, **context}))


def of(report: ScanReport, check: str, severity: str | None = None) -> list:
    return [f for f in report.findings if f.check == check and (severity is None or f.severity.value == severity)]
