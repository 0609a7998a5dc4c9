"""`enclave review scan`: the issue's acceptance cases, exit codes, output formats, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.cli import run
from tests.demo_fixture import demo_dir  # noqa: F401 (fixture)
from tests.review_corpus import fake_ssns, people_csv, review_home, tiny_gpt2, wte, zip_bytes  # noqa: F401 (fixtures)


def scan_cli(capsys, *args: str) -> tuple[int, dict | str, str]:
    code = run(["review", "scan", *map(str, args)])
    out, err = capsys.readouterr()
    if "--json" in args and out.strip():
        return code, json.loads(out), err
    return code, out, err


def checks_of(body: dict, severity: str = "block") -> set[str]:
    return {f["check"] for f in body["findings"] if f["severity"] == severity}


# ----- the "done when" ------------------------------------------------------------------

def test_embedding_rows_csv_blocks(capsys, tmp_path, tiny_gpt2):
    emb = wte(tiny_gpt2)
    rows = [[f"{v:.4g}" for v in emb[i] * s] for i, s in ((10, 1.0), (20, -1.0), (30, 0.5))]
    path = tmp_path / "embeddings.csv"
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    transposed = tmp_path / "transposed.csv"
    transposed.write_text("\n".join(",".join(f"{v:.3g}" for v in col) for col in emb[[40, 41]].T) + "\n")
    code, body, _ = scan_cli(capsys, path, transposed, "--model", tiny_gpt2, "--json")
    assert code == 1 and body["verdict"] == "block"
    matches = [f for f in body["findings"] if f["check"] == "weight_vectors"]
    assert {f["file"] for f in matches} == {str(path), str(transposed)} and len(matches) == 5
    assert set(matches[0]) == {"check", "severity", "file", "location", "message"}


def test_table_with_a_cell_of_3_blocks(capsys, tmp_path):
    path = tmp_path / "counts.csv"
    path.write_text("region,n\nnorth,120\nsouth,3\n")
    code, body, _ = scan_cli(capsys, path, "--json")
    assert code == 1 and checks_of(body) == {"tables"}


def test_file_of_fake_ssns_blocks(capsys, tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(fake_ssns(25)) + "\n")
    code, body, _ = scan_cli(capsys, path, "--json")
    assert code == 1 and checks_of(body) == {"identifiers"}
    assert len(body["findings"]) == 25


def test_clean_results_table_passes(capsys, tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("occupation,n,mean_income,sd_income\nnurse,152,61250.5,8100.2\nteacher,240,52010.0,7300.9\n"
                    "chef,87,38800.25,5200.0\n")
    code, body, _ = scan_cli(capsys, path, "--json", "--protect", people_csv(tmp_path))
    assert (code, body) == (0, {"verdict": "pass", "findings": []})


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first demo build on a machine trains for a few minutes
def test_demo_models_memorised_records_block(capsys, tmp_path, demo_dir):
    from enclave.demo import data
    from enclave.demo.model import memorised_records

    trained = demo_dir.training_counts()
    everyone = data.read_csv(demo_dir.people_csv)
    repeated = [p for p in everyone if trained.get(p.name, 0) > 1][:24]
    recalled = memorised_records(demo_dir.model_dir, repeated)
    assert len(recalled) >= 10
    export = tmp_path / "what_the_model_said.txt"
    export.write_text("Greedy completions from the model:\n\n" + "\n".join(r.prompt + r.completion for r in recalled) + "\n")
    code, body, _ = scan_cli(capsys, export, "--json", "--protect", demo_dir.people_csv, "--protect",
                             demo_dir.training_txt, "--model", demo_dir.model_dir)
    assert code == 1
    linked = [f for f in body["findings"] if f["check"] == "record_linkage"]
    assert len(linked) == len(recalled)
    assert all(r.person.name not in f["message"] for r in recalled for f in linked)
    assert "memorisation" in checks_of(body)
    assert "model_signals" in checks_of(body, "warn")


# ----- behaviour of the command ----------------------------------------------------------------

def test_readable_table_output_and_review_exits_zero(capsys, tmp_path):
    (tmp_path / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    code, out, _ = scan_cli(capsys, tmp_path / "plot.png")
    assert code == 0
    assert out.splitlines()[0].split() == ["SEVERITY", "CHECK", "FILE", "LOCATION", "MESSAGE"]
    assert "verdict: review" in out


def test_folders_are_walked_and_links_not_followed(capsys, tmp_path):
    root = tmp_path / "export"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "t.csv").write_text("g,n\na,4\n")
    (root / "ok.md").write_text("fine")
    (root / "secret").symlink_to("/etc/passwd")
    os.mkfifo(root / "pipe")
    code, body, _ = scan_cli(capsys, root, "--json")
    assert code == 1
    by_file = {(f["file"], f["check"]) for f in body["findings"]}
    assert ("export/sub/t.csv", "tables") in by_file
    assert ("export/secret", "file_policy") in by_file and ("export/pipe", "file_policy") in by_file
    assert not any("root:" in f["message"] for f in body["findings"])


def test_a_sparse_1gb_file_is_refused_unread(capsys, tmp_path):
    big = tmp_path / "huge.bin.csv"
    with big.open("wb") as handle:
        handle.truncate(1 << 30)
    code, body, _ = scan_cli(capsys, big, "--json")
    assert code == 1 and "over the limit" in body["findings"][0]["message"]


@pytest.mark.parametrize("args, message", [
    (["/no/such/export.csv"], "no such file or folder"),
    (["{ok}", "--policy", "/no/policy.toml"], "cannot read policy file"),
    (["{ok}", "--policy", "{bad_policy}"], "missing key 'version'"),
    (["{ok}", "--protect", "/no/such.csv"], "--protect: no such file"),
    (["{ok}", "--model", "{empty_dir}"], "--model: no weights"),
])
def test_errors_exit_2_with_one_line(capsys, tmp_path, args, message):
    ok = tmp_path / "ok.txt"
    ok.write_text("fine")
    bad = tmp_path / "bad.toml"
    bad.write_text("[files]\nmax_file_bytes = 1\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    filled = [a.format(ok=ok, bad_policy=bad, empty_dir=empty) for a in args]
    code, out, err = scan_cli(capsys, *filled, "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("enclave: ")


def test_the_installed_command_runs(tmp_path):
    """The real `enclave` entry point in a subprocess: exit status and JSON on stdout."""
    path = tmp_path / "t.csv"
    path.write_text("g,n\na,2\n")
    env = {**os.environ, "ENCLAVE_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", "from enclave.cli import main; main()", "review", "scan", str(path), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["verdict"] == "block"


def test_zipped_and_nested_inputs(capsys, tmp_path):
    inner = zip_bytes({"ids.txt": "\n".join(fake_ssns(2))})
    path = tmp_path / "bundle.zip"
    path.write_bytes(zip_bytes({"inner.zip": inner}))
    code, body, _ = scan_cli(capsys, path, "--json")
    assert code == 1
    assert {f["file"] for f in body["findings"]} == {f"{path}!inner.zip!ids.txt"}


def test_a_notebook_export(capsys, tmp_path):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "source": "# Analysis", "metadata": {}},
        {"cell_type": "code", "source": "df.groupby('site').size()", "metadata": {}, "execution_count": 2,
         "outputs": [{"output_type": "execute_result", "execution_count": 2, "metadata": {},
                      "data": {"text/plain": "      n\nsite   \nA    50\nB     6"}}]}]}
    path = tmp_path / "analysis.ipynb"
    path.write_text(json.dumps(nb))
    code, body, _ = scan_cli(capsys, path, "--json")
    assert code == 1
    [finding] = body["findings"]
    assert finding["location"].startswith("cell 2 output 1") and finding["check"] == "tables"


def test_policy_file_option_changes_thresholds(capsys, tmp_path):
    from tests.review_corpus import POLICY

    lowered = Path(POLICY.path).read_text().replace("min_count = 10", "min_count = 3")
    policy = tmp_path / "lenient.toml"
    policy.write_text(lowered)
    counts = tmp_path / "counts.csv"
    counts.write_text("region,n\nnorth,120\nsouth,3\n")
    code, body, _ = scan_cli(capsys, counts, "--json", "--policy", policy)
    assert (code, body["verdict"]) == (0, "pass")
