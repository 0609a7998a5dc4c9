"""Activation dumps in exports: real activations of the demo model, computed by the gateway's own
forward pass at TransformerLens hook points, leave as npy/npz/safetensors/JSON/CSV/text; a dump
of them is blocked whatever its container, a scholar's small summary table of them passes with a
warning, and ordinary numbers are not taken for activations."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from enclave.review.scan.checks.activations import HOOK_NAME, hook_shape
from enclave.review.scan.model_dims import read_model_dims
from tests.demo_fixture import demo_dir  # noqa: F401 (fixture)
from tests.review_corpus import POLICY, of, review_home, scan  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(900)  # the first demo build on a machine trains for minutes

PROMPTS = ["The census of 1990 was taken in the spring.", "Ada Lovelace wrote the first program.",
           "A river runs through the old town.", "Prices rose by three percent last year."]
RESID = [f"blocks.{i}.hook_resid_post" for i in range(4)]
MLP = [f"blocks.{i}.mlp.hook_post" for i in range(4)]


@pytest.fixture(scope="module")
def acts(demo_dir):  # noqa: F811
    """hook -> [positions, width] float16 arrays per prompt, from the gateway's forward pass."""
    from enclave.gateway.gpt2 import GPT2Forward
    from enclave.gateway.model import load_model
    from enclave.gateway.settings import CpuKernelSettings

    loaded = load_model(demo_dir.model_dir, device="cpu")
    forward = GPT2Forward(loaded.model, max_slots=1, kernel_settings=CpuKernelSettings(enabled=False))
    out = []
    for prompt in PROMPTS:
        ids = [50256, *loaded.tokenizer.encode(prompt)]
        got = forward.activations(ids, [*RESID, *MLP, "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z"],
                                  list(range(len(ids))))
        out.append({name: value.numpy() for name, value in got.items()})
    return out


def model_dirs(demo_dir):  # noqa: F811
    return {"model_dirs": [demo_dir.model_dir]}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_the_demo_models_dimensions_come_from_its_directory(demo_dir):  # noqa: F811
    dims = read_model_dims(demo_dir.model_dir)
    assert (dims.d_model, dims.d_mlp, dims.n_heads, dims.d_head, dims.n_ctx, dims.n_layers) == (128, 512, 4, 32, 256, 4)
    assert hook_shape((12, 128), [dims]) and hook_shape((12, 512), [dims]) and hook_shape((12, 4, 32), [dims])
    assert hook_shape((4, 12, 12), [dims]) and hook_shape((128, 12), [dims])
    assert hook_shape((12, 3), [dims]) is None and hook_shape((300, 7), [dims]) is None
    assert HOOK_NAME.search("x = cache['blocks.11.attn.hook_pattern']")
    assert HOOK_NAME.search("ln_final.hook_normalized") and not HOOK_NAME.search("myblocks.0.hook_resid_prex")


def test_a_dump_of_residual_and_mlp_activations_is_blocked_in_every_container(acts, demo_dir):  # noqa: F811
    resid = np.concatenate([a[h] for a in acts for h in RESID])  # [positions x layers, 128]
    mlp = np.concatenate([a[h] for a in acts for h in MLP])  # [positions x layers, 512]
    assert resid.dtype == np.float16 and resid.shape[1] == 128 and mlp.shape[1] == 512
    assert resid.size > POLICY.activations.max_numbers

    buffer = io.BytesIO()
    np.savez(buffer, **{h: acts[0][h] for h in RESID + MLP})
    from safetensors.numpy import save as save_safetensors
    as_json = json.dumps({h: acts[1][h].astype(float).round(4).tolist() for h in RESID + MLP})
    # The gateway's own answer, saved as it came (base64 float16 under the hook names).
    import base64
    reply = json.dumps({"activations": {h: {"shape": list(acts[2][h].shape), "dtype": "float16",
                                            "data": base64.b64encode(acts[2][h].tobytes()).decode()} for h in RESID + MLP}})
    csv = "\n".join(",".join(f"{v:.4f}" for v in row) for row in resid.astype(float)) + "\n"
    header_csv = ",".join(f"d{i}" for i in range(512)) + "\n" + \
        "\n".join(",".join(f"{v:.3g}" for v in row) for row in mlp.astype(float)) + "\n"
    savetxt = io.StringIO()
    np.savetxt(savetxt, resid.astype(np.float32), fmt="%.5f")
    files = {
        "resid.npy": npy(resid), "acts.npz": buffer.getvalue(),
        "acts.safetensors": save_safetensors({h: acts[3][h] for h in RESID + MLP}),
        "acts.json": as_json, "reply.json": reply, "resid.csv": csv, "mlp.csv": header_csv,
        "resid.txt": savetxt.getvalue(),
    }
    for name, content in files.items():
        report = scan({name: content}, **model_dirs(demo_dir))
        found = of(report, "activations", "block")
        assert found, (name, [f.message for f in report.findings])
        assert "activation dump" in found[0].message and found[0].evidence["numbers"] > POLICY.activations.max_numbers
        assert report.verdict.value == "block"

    # The JSON names its arrays by their hooks, and says which model's shape they have.
    [found] = of(scan({"acts.json": as_json}, **model_dirs(demo_dir)), "activations", "block")
    wheres = {a["where"] for a in found.evidence["arrays"]}
    assert set(RESID + MLP) <= wheres
    assert any("d_mlp=512" in a["why"] for a in found.evidence["arrays"])


def test_a_dump_split_over_small_files_is_judged_on_its_sum(acts, demo_dir):  # noqa: F811
    pieces = {}
    for n, a in enumerate(acts):
        for h in RESID:
            rows = a[h].astype(float)
            pieces[f"part-{n}-{h}.csv"] = "\n".join(",".join(f"{v:.4f}" for v in row) for row in rows) + "\n"
    assert all(len(p.splitlines()) * 128 < POLICY.activations.max_numbers for p in pieces.values())
    report = scan(pieces, **model_dirs(demo_dir))
    assert of(report, "activations", "warn")  # the first pieces alone are small
    blocked = of(report, "activations", "block")
    assert blocked and "with the export's earlier files" in blocked[0].message


def test_a_small_summary_table_of_activations_passes_with_a_warning(acts, demo_dir):  # noqa: F811
    rows = ["hook,mean_norm,std_norm,max_abs"]
    for h in RESID + MLP:
        norms = np.concatenate([np.linalg.norm(a[h].astype(np.float32), axis=-1) for a in acts])
        peak = max(float(np.abs(a[h]).max()) for a in acts)
        rows.append(f"{h},{norms.mean():.3f},{norms.std():.3f},{peak:.3f}")
    report = scan({"norms.csv": "\n".join(rows) + "\n"}, **model_dirs(demo_dir))
    [found] = of(report, "activations", "warn")
    assert found.evidence["numbers"] == 24
    assert not of(report, "activations", "block") and report.verdict.value != "block"

    # A mean direction per layer (4 x 128 numbers) is a summary too: shown, not blocked.
    means = {h: np.concatenate([a[h] for a in acts]).astype(np.float32).mean(axis=0).round(4).tolist() for h in RESID}
    report = scan({"means.json": json.dumps(means)}, **model_dirs(demo_dir))
    [found] = of(report, "activations", "warn")
    assert found.evidence["numbers"] == 512 and not of(report, "activations", "block")


def test_a_pickle_naming_hooks_is_an_activation_dump(acts, demo_dir):  # noqa: F811
    import pickle

    dumped = pickle.dumps({h: acts[0][h] for h in RESID + MLP} | {"more": np.zeros((40, 128), np.float16)}, protocol=4)
    report = scan({"cache.pkl": dumped}, **model_dirs(demo_dir))
    [found] = of(report, "activations", "block")
    assert "blocks.0.hook_resid_post" in found.evidence["arrays"][0]["where"]
    assert of(report, "weight_files", "block")  # and, as every tensor file, it may not leave anyway


def test_ordinary_numbers_are_not_activations(demo_dir):  # noqa: F811
    rng = np.random.default_rng(3)
    counts = "region,cases,population\n" + "\n".join(f"r{i},{rng.integers(20, 900)},{rng.integers(10_000, 90_000)}"
                                                     for i in range(300)) + "\n"
    floats = "x,y,z\n" + "\n".join(",".join(f"{v:.4f}" for v in rng.normal(size=3)) for _ in range(3000)) + "\n"
    losses = json.dumps({"loss": rng.random(2000).round(4).tolist()})
    report = scan({"counts.csv": counts, "floats.csv": floats, "losses.json": losses, "notes.md": "# Notes\n1.5 and 2.25\n"},
                  **model_dirs(demo_dir))
    assert not of(report, "activations")


def test_without_a_model_in_the_context_only_hook_names_count(acts):
    resid = np.concatenate([a[h] for a in acts for h in RESID])
    assert not of(scan({"resid.csv": "\n".join(",".join(f"{v:.4f}" for v in r) for r in resid.astype(float))}),
                  "activations")
    named = json.dumps({h: acts[0][h].astype(float).round(4).tolist() for h in RESID + MLP} |
                       {f"blocks.{i}.hook_resid_pre": resid[:20].astype(float).round(4).tolist() for i in range(4)})
    assert of(scan({"named.json": named}), "activations", "block")


def test_a_model_whose_config_names_no_width_is_reported_not_fatal(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    report = scan({"a.csv": "x,y\n1.5,2.5\n"}, model_dirs=[broken])
    assert any("no readable dimensions" in f.message for f in of(report, "context", "warn"))
    assert not of(report, "activations")


def test_a_notebook_that_asks_for_activations_is_not_a_dump(demo_dir):  # noqa: F811
    from tests.review_corpus import code_cell, notebook, stream

    cells = notebook(code_cell("acts = ec.activations(prompt, ['blocks.0.hook_resid_pre'])\nlr = 0.001\n",
                               stream("norm 12.5 at blocks.0.hook_resid_pre\n")))
    assert not of(scan({"work.ipynb": cells}, **model_dirs(demo_dir)), "activations")


def test_a_notebook_output_printing_activations_by_hook_is_a_dump(acts, demo_dir):  # noqa: F811
    from tests.review_corpus import code_cell, notebook, stream

    printed = "\n".join(f"{h}: {acts[0][h].astype(float).round(4).tolist()}" for h in RESID + MLP)
    cells = notebook(code_cell("for h in hooks: print(h, acts[h].tolist())", stream(printed)))
    [found] = of(scan({"work.ipynb": cells}, **model_dirs(demo_dir)), "activations", "block")
    assert "names TransformerLens hooks" in found.message and found.evidence["arrays"][0]["where"].startswith("cell 1 output 1")
