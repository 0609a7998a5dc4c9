"""Benchmark: DP-SGD (Opacus) against ordinary training of the same GPT-2, and the canary audit.

    .venv/bin/python bench/dp.py [--json] [--device auto|cpu|cuda] [--steps N] [--no-exposure]

Part 1, cost. For each model — the demo GPT-2 (4 layers, 128 wide, GPT-2's full 50,257-token
vocabulary) and the GPT-2 124M architecture (`GPT2Config()` defaults, random weights) — one
optimizer step is timed, and peak memory measured, for:

- `non-private`: AdamW on the mean loss (tied embeddings, as GPT-2 ships);
- `dp-hooks`: Opacus DP-SGD in its default `hooks` mode (per-sample gradients materialised, tied
  embeddings: the shared weight's per-sample gradient sums both uses);
- `dp-ghost`: Opacus ghost clipping (`grad_sample_mode="ghost"`: per-sample gradient *norms* only,
  then a second backward), which refuses tied parameters, so `lm_head` is untied (a copy of `wte`)
  for this row.

Every parameter is trained (embeddings too) so the rows compare like with like; the fine-tune jobs
freeze the embeddings by default (see `enclave.privacy.finetune`). Each row runs in its own
process, so its peak memory is its own: on CPU the process's peak resident set (`ru_maxrss`) and
its growth over the loaded model ("train"), on CUDA `torch.cuda.max_memory_allocated`. Batches
have a fixed size here (no Poisson sampling) so step times are comparable; noise multiplier 1.0.
A row's time is its fastest step after a warm-up (the least disturbed by other work on the machine;
the median is in the JSON). Ratios are against the non-private row of the same model, measured in
the same run.

Part 2, the canary audit: the same small fine-tune of the demo GPT-2 (60 demo records plus
canaries, 3 epochs) without DP and with DP at epsilon 8, and their Secret Sharer exposure per
repetition count (tests/test_privacy_canaries.py asserts on the same configuration).

Not a test: timings depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

MODES = ("non-private", "dp-hooks", "dp-ghost")
# (model, batch size, sequence length) per device: small enough for two CPU cores in minutes.
SHAPES = {"cpu": {"demo": (16, 64), "gpt2-124m": (4, 64)},
          "cuda": {"demo": (64, 128), "gpt2-124m": (16, 256)}}


def log(msg: str, quiet: bool) -> None:
    print(msg, file=sys.stderr if quiet else sys.stdout, flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _demo_model_dir() -> Path:
    from enclave.demo.model import build_demo
    from enclave.envsettings import cache_dir

    return build_demo(cache_dir("demo-model"), progress=False).model_dir


def _model(name: str, untie: bool):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from enclave.privacy import finetune

    if name == "demo":
        model, _ = finetune.load_model(_demo_model_dir(), untie=untie)
        return model
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(tie_word_embeddings=not untie))
    model.loss_type = "ForCausalLM"
    return model


def one_row(model_name: str, mode: str, device: str, steps: int) -> dict:
    """Time `steps` optimizer steps (after one warm-up step) in this process; its peak memory."""
    import torch
    from opacus import PrivacyEngine

    from enclave.privacy import finetune

    batch, seq = SHAPES["cuda" if device.startswith("cuda") else "cpu"][model_name]
    model = _model(model_name, untie=mode == "dp-ghost").to(device).train()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, min(vocab, 5000), (batch * (steps + 1), seq), generator=generator)
    mask = torch.ones_like(ids)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, mask, ids.clone()), batch_size=batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = finetune.SequenceLoss()
    if mode != "non-private":
        engine = PrivacyEngine(accountant="prv")
        kwargs = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
                      grad_sample_mode="ghost" if mode == "dp-ghost" else "hooks", poisson_sampling=False)
        if mode == "dp-ghost":
            model, optimizer, criterion, loader = engine.make_private(criterion=criterion, **kwargs)
        else:
            model, optimizer, loader = engine.make_private(**kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = _rss_mb()
    times = []
    for i, (x, m, y) in enumerate(loader):
        x, m, y = x.to(device), m.to(device), y.to(device)
        start = time.perf_counter()
        finetune.train_step(model, optimizer, criterion, x, m, y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0:  # the first step allocates optimizer state and warms caches
            times.append(time.perf_counter() - start)
    row = {"model": model_name, "mode": mode, "batch": batch, "seq_len": seq, "device": device,
           "parameters": sum(p.numel() for p in (model._module if hasattr(model, "_module") else model).parameters()),
           # The fastest step: the one least disturbed by whatever else shares the machine.
           "step_s": min(times), "step_median_s": statistics.median(times), "steps_timed": len(times)}
    if device.startswith("cuda"):
        row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["train_mb"] = row["peak_mb"]
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row["peak_mb"], row["train_mb"] = peak, max(0.0, peak - base_rss)
    return row


def cost_rows(device: str, steps: int, quiet: bool, models: list[str]) -> list[dict]:
    rows = []
    for model_name in models:
        for mode in MODES:
            started = time.monotonic()
            proc = subprocess.run([sys.executable, __file__, "--_row", model_name, mode, "--device", device,
                                   "--steps", str(steps)], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                rows.append({"model": model_name, "mode": mode, "error": " | ".join(tail)})
                log(f"{model_name:10} {mode:12} failed: {rows[-1]['error']}", quiet)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(f"{model_name:10} {mode:12} {row['step_s']:.3f} s/step, peak {row['peak_mb']:.0f} MB "
                f"({time.monotonic() - started:.0f} s)", quiet)
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["mode"] == "non-private" and "error" not in r),
                    None)
        if base and "error" not in row:
            row["time_ratio"] = row["step_s"] / base["step_s"]
            row["peak_ratio"] = row["peak_mb"] / base["peak_mb"]
            row["train_mem_ratio"] = row["train_mb"] / base["train_mb"] if base["train_mb"] > 0 else None
    return rows


def exposure_rows(device: str, quiet: bool) -> dict:
    from enclave.privacy import finetune

    demo = _demo_model_dir()
    records = finetune.dataset_records(demo.parent / "data" / "people.csv", max_records=60)
    out = {}
    for label, epsilon in (("non-private", None), ("dp-eps-8", 8.0)):
        params = finetune.FinetuneParams(epsilon=epsilon, delta=1e-3, epochs=3, batch_size=16, learning_rate=3e-3,
                                         max_length=32, canaries_per_repeat=2, canary_candidates=300, holdout=0.1,
                                         device=device, seed=7)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="enclave-bench-dp-") as scratch:
            result = finetune.run(demo, records, params, Path(scratch) / "model")
        out[label] = {"epsilon_spent": result.epsilon_spent, "noise_multiplier": result.noise_multiplier,
                      "steps": result.steps, "seconds": result.seconds, "table": result.exposure["table"],
                      "candidates": result.exposure["candidates"]}
        log(f"exposure, {label}: done in {result.seconds:.0f} s", quiet)
    return out


def print_report(report: dict) -> None:
    print(f"\nDP-SGD cost on {report['device']} ({report['threads']} threads), fastest of {report['steps']} steps")
    print(f"{'model':10} {'mode':12} {'batch x seq':>11} {'s/step':>8} {'x time':>7} {'peak MB':>8} {'x peak':>7} "
          f"{'train MB':>9} {'x train':>8}")
    for r in report["cost"]:
        if "error" in r:
            print(f"{r['model']:10} {r['mode']:12} failed: {r['error']}")
            continue
        ratio = lambda key: f"{r[key]:.2f}" if r.get(key) is not None else "-"  # noqa: E731
        print(f"{r['model']:10} {r['mode']:12} {r['batch']:>4} x {r['seq_len']:<4} {r['step_s']:>8.3f} "
              f"{ratio('time_ratio'):>7} {r['peak_mb']:>8.0f} {ratio('peak_ratio'):>7} {r['train_mb']:>9.0f} "
              f"{ratio('train_mem_ratio'):>8}")
    if report.get("exposure"):
        from enclave.privacy.canaries import table_lines

        for label, ex in report["exposure"].items():
            eps = f", epsilon spent {ex['epsilon_spent']:.2f}" if ex["epsilon_spent"] else ""
            print(f"\n{label}{eps} ({ex['steps']} steps, {ex['seconds']:.0f} s)")
            lines = table_lines({"candidates": ex["candidates"], "table": ex["table"],
                                 "max_rank_exposure_bits": __import__("math").log2(ex["candidates"]),
                                 "max_exposure_bits": 29.897})
            print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (after one warm-up)")
    parser.add_argument("--models", default="demo,gpt2-124m", help="comma-separated: demo, gpt2-124m")
    parser.add_argument("--no-exposure", action="store_true", help="skip the canary audit part")
    parser.add_argument("--_row", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._row:
        print(json.dumps(one_row(args._row[0], args._row[1], device, args.steps)))
        return
    quiet = args.json
    report = {"device": device, "threads": torch.get_num_threads(), "steps": args.steps,
              "torch": torch.__version__, "opacus": __import__("opacus").__version__,
              "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}
    report["cost"] = cost_rows(device, args.steps, quiet, args.models.split(","))
    report["exposure"] = None if args.no_exposure else exposure_rows(device, quiet)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
