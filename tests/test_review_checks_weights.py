"""Exported numbers against model weights: rows and columns survive rounding, scaling, sign flips
and transposition; random numbers and ordinary tables do not match."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

from enclave.review.scan import fingerprint
from tests.review_corpus import POLICY, build_tiny_gpt2, of, review_home, scan, tiny_gpt2, wte, zip_bytes  # noqa: F401 (fixtures)


def sig(values, digits: int) -> list[str]:
    return [f"{float(v):.{digits}g}" for v in values]


def csv_rows(rows) -> str:
    return "\n".join(",".join(r) for r in rows) + "\n"


def test_embedding_rows_rounded_scaled_and_sign_flipped_are_found(tiny_gpt2):
    emb = wte(tiny_gpt2)
    rows = [sig(emb[7], 4), sig(-3.5 * emb[42], 3), sig(0.01 * emb[999], 3)]
    report = scan({"embeddings.csv": csv_rows(rows)}, model_dirs=[tiny_gpt2])
    found = of(report, "weight_vectors", "block")
    assert sorted(f.evidence["index"] for f in found) == [7, 42, 999]
    assert all(f.evidence["tensor"] == "transformer.wte.weight" and f.evidence["axis"] == "row" for f in found)
    scales = {f.evidence["index"]: f.evidence["scale"] for f in found}
    assert scales[42] == pytest.approx(-3.5, rel=1e-2)
    assert found[0].location.startswith("line 1")


def test_transposed_dump_is_found_column_by_column(tiny_gpt2):
    emb = wte(tiny_gpt2)
    picked = emb[[3, 500, 777]]  # 3 rows of 64
    table = [sig(col, 4) for col in picked.T]  # 64 lines, 3 numbers each: a weight row per column
    report = scan({"transposed.csv": csv_rows(table)}, model_dirs=[tiny_gpt2])
    found = of(report, "weight_vectors", "block")
    assert sorted(f.evidence["index"] for f in found) == [3, 500, 777]
    assert all("column" in f.evidence["reading"] for f in found)


def test_weight_columns_and_slices_are_found(tiny_gpt2):
    emb = wte(tiny_gpt2)
    column_slice = emb[100:180, 5]  # 80 values down dimension 5
    report = scan({"col.txt": "\n".join(sig(2 * column_slice, 4))}, model_dirs=[tiny_gpt2])
    [f] = of(report, "weight_vectors", "block")
    assert (f.evidence["axis"], f.evidence["index"], f.evidence["weight_start"]) == ("column", 5, 100)


def test_attention_weights_in_json_and_numpy_printouts(tiny_gpt2):
    from safetensors.numpy import load_file

    c_attn = load_file(str(tiny_gpt2 / "model.safetensors"))["transformer.h.1.attn.c_attn.weight"]  # 64 x 192
    as_json = json.dumps({"layer": 1, "values": [float(f"{v:.4g}") for v in c_attn[10]]})
    printout = np.array2string(-c_attn[:, 20], precision=4, max_line_width=80)
    report = scan({"w.json": as_json, "print.txt": printout}, model_dirs=[tiny_gpt2])
    found = {(f.file, f.evidence["tensor"], f.evidence["axis"], f.evidence["index"]) for f in of(report, "weight_vectors")}
    assert ("w.json", "transformer.h.1.attn.c_attn.weight", "row", 10) in found
    assert ("print.txt", "transformer.h.1.attn.c_attn.weight", "column", 20) in found


def test_json_matrix_is_read_column_wise(tiny_gpt2):
    emb = wte(tiny_gpt2)
    matrix = [[float(f"{v:.4g}") for v in row] for row in emb[[1, 2]].T]  # 64 x 2
    report = scan({"m.json": json.dumps({"matrix": matrix})}, model_dirs=[tiny_gpt2])
    assert sorted(f.evidence["index"] for f in of(report, "weight_vectors")) == [1, 2]


def test_float32_bytes_in_base64_are_compared_with_weights(tiny_gpt2):
    blob = base64.b64encode(wte(tiny_gpt2)[12:20].astype("<f4").tobytes()).decode()
    report = scan({"blob.txt": f"payload: {blob}\n"}, model_dirs=[tiny_gpt2])
    assert any(f.evidence.get("index") == 12 for f in of(report, "weight_vectors", "block"))


def test_rows_nested_in_zip_are_found(tiny_gpt2):
    emb = wte(tiny_gpt2)
    report = scan({"out.zip": zip_bytes({"deep/e.csv": csv_rows([sig(emb[5], 4)])})}, model_dirs=[tiny_gpt2])
    [f] = of(report, "weight_vectors", "block")
    assert f.file == "out.zip!deep/e.csv"


def test_random_numbers_and_results_tables_do_not_match(tiny_gpt2):
    rng = np.random.default_rng(5)
    noise = csv_rows([sig(rng.normal(0, 0.02, 64), 4) for _ in range(50)])
    results = "group,n,mean,sd\n" + "".join(f"g{i},{100 + i},{rng.normal(50, 5):.2f},{rng.normal(5, 1):.2f}\n" for i in range(60))
    # A different model with the same shapes: same architecture, other weights.
    report = scan({"noise.csv": noise, "results.csv": results}, model_dirs=[tiny_gpt2])
    assert not of(report, "weight_vectors")


def test_other_models_weights_do_not_match(tiny_gpt2, tmp_path):
    other = build_tiny_gpt2(tmp_path / "other", seed=1)
    report = scan({"e.csv": csv_rows([sig(wte(other)[7], 4)])}, model_dirs=[tiny_gpt2])
    assert not of(report, "weight_vectors")


def test_short_runs_are_not_compared(tiny_gpt2):
    emb = wte(tiny_gpt2)
    report = scan({"short.csv": csv_rows([sig(emb[7][:10], 4)])}, model_dirs=[tiny_gpt2])
    assert not of(report, "weight_vectors")


def test_fingerprints_are_cached_in_memory_and_on_disk(tiny_gpt2, tmp_path):
    from enclave.review.scan.cache import ScanCache

    cache = ScanCache(disk_dir=tmp_path / "cache")
    w = POLICY.weights
    first = fingerprint.fingerprint(tiny_gpt2, w.window, w.index_stride, w.min_vector_length, cache=cache)
    assert fingerprint.fingerprint(tiny_gpt2, w.window, w.index_stride, w.min_vector_length, cache=cache) is first
    cached = list((tmp_path / "cache" / "fingerprints").glob("*.npz"))
    assert len(cached) == 1
    again = fingerprint.fingerprint(tiny_gpt2, w.window, w.index_stride, w.min_vector_length,
                                    cache=ScanCache(disk_dir=tmp_path / "cache"))  # a new process: from disk
    assert again is not first and np.array_equal(again.keys, first.keys)


def test_a_model_without_weights_is_reported_not_fatal(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    report = scan({"a.txt": "1 2 3"}, model_dirs=[empty])
    [f] = of(report, "context", "warn")
    assert "could not be fingerprinted" in f.message


@pytest.mark.slow
def test_fingerprinting_gpt2_124m_takes_well_under_a_minute(tmp_path):
    """A GPT-2 124M-shaped checkpoint (random weights, real shapes) is keyed in seconds."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"transformer.wte.weight": rng.normal(0, 0.1, (50257, 768)).astype(np.float32),
               "transformer.wpe.weight": rng.normal(0, 0.01, (1024, 768)).astype(np.float32)}
    for layer in range(12):
        for name, shape in (("attn.c_attn.weight", (768, 2304)), ("attn.c_proj.weight", (768, 768)),
                            ("mlp.c_fc.weight", (768, 3072)), ("mlp.c_proj.weight", (3072, 768))):
            tensors[f"transformer.h.{layer}.{name}"] = rng.normal(0, 0.02, shape).astype(np.float32)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    started = time.monotonic()
    w = POLICY.weights
    fp = fingerprint.build(Path(folder), w.window, w.index_stride, w.min_vector_length)
    elapsed = time.monotonic() - started
    assert elapsed < 45, elapsed
    row = np.array([float(f"{v:.3g}") for v in -2 * tensors["transformer.wte.weight"][31337]])
    [match] = fp.match(row, min_length=w.min_vector_length, min_cosine=w.min_cosine,
                       max_candidates=w.max_candidates_per_vector)
    assert (match.tensor, match.index) == ("transformer.wte.weight", 31337)
