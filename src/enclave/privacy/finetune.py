"""DP fine-tuning of GPT-2 with Opacus (DP-SGD), the training core the CLI and the service share.

What one fine-tune does, in order:

1. Read the dataset's records as text, one training example per record (a CSV row, or a line of a
   text file): a record is the privacy unit, so DP-SGD's guarantee is per record. A CSV of people
   records (the demo's columns) is written the way the demo model's corpus writes them; any other
   CSV as "column: value" pairs. A share of the records (`holdout`) is kept out of training as the
   non-members of the membership-inference audit.
2. Plant the canaries (`canaries.plant`) into a copy of the training examples.
3. Train with `PrivacyEngine.make_private_with_epsilon`: Poisson-sampled batches, per-record
   gradients clipped to `max_grad_norm`, Gaussian noise calibrated by Opacus's accountant (PRV by
   default; RDP on request) so that the whole run is (epsilon, delta)-DP for every example. A
   non-private run (operator override) trains the same way without the engine.
4. Save with `save_pretrained` (+ tokenizer), then reload what was saved and audit it: canary
   exposure and sacroml's membership inference.

GPT-2 under Opacus: Hugging Face's GPT-2 uses `Conv1D` layers, which Opacus's default `hooks` grad
sampler handles (its `ew` mode does not); the tied `lm_head`/`wte` weight gets its per-sample
gradient summed over both uses. Ghost clipping (`grad_sample_mode="ghost"`) refuses tied
parameters, so for it `lm_head` is untied (a copy of the embedding) and the saved model says
`tie_word_embeddings=False`. Positions are passed explicitly per example: GPT-2 otherwise
broadcasts one row of `position_ids` over the batch, and the position embedding's per-sample
gradient then has a batch of 1 (opacus issue #841).

By default the token and position embeddings are frozen (`train_embeddings=False`): their
per-sample gradients are vocabulary x width per example (38.6M numbers per record for GPT-2 124M),
which dominate DP-SGD's memory, and noise in 50,257 embedding rows that a small dataset never uses
only hurts. The transformer blocks and the final layer norm are trained.

Randomness. The DP noise and the Poisson sampling of batches are drawn from two torch generators
seeded from `secrets` at every run (`noise_generator=` for Opacus's optimizer, the DataLoader's
own generator for its sampler), never from `seed`: `seed` (which a notebook may set) only
decides the holdout split and the canaries, so knowing it tells nothing about the noise.
`noise_seed` seeds both generators instead, for tests and benchmarks that must repeat a run; it
is never accepted from notebooks and the service refuses a job that carries one.

Opacus runs with `secure_mode=False`: its secure mode needs torchcsprng, which has no wheel for
this torch. The noise therefore comes from torch's pseudo-random generators (Mersenne Twister on
CPU, Philox on CUDA) through its floating-point Gaussian sampler, not a CSPRNG, and is open to the floating-point attacks on Gaussian samplers (Mironov 2012; Jin et al.
2021, arXiv:2107.10138 / 2112.05307): an attacker who sees noised values exactly may recover
information that the idealised Gaussian mechanism hides. Here the noise never leaves the
process (only the trained weights do, after many noised steps), which makes such an attack far
harder, but the guarantee is the one of an implementation without secure mode.

torch, transformers and opacus are imported inside functions: the CLI imports this module on
every start.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from enclave.errors import BadInput
from enclave.privacy import canaries as canary_audit
from enclave.privacy import membership
from enclave.privacy.datafiles import read_registered

ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("hooks", "ghost")
# The demo's people records (enclave.demo.data.COLUMNS), written as its corpus writes them.
_PEOPLE_COLUMNS = {"name", "dob", "sex", "zip", "occupation", "income"}


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    """Everything that decides a fine-tune besides its data and base model (stored with the job)."""

    epsilon: float | None  # None: non-private (operator override)
    delta: float
    epochs: int = 3
    batch_size: int = 32  # expected batch size (Poisson sampling makes it vary)
    learning_rate: float = 5e-4
    max_grad_norm: float = 1.0
    max_length: int = 64  # tokens per example
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"
    train_embeddings: bool = False
    holdout: float = 0.1  # share of records kept out of training, as membership non-members
    max_records: int | None = None  # use only the first N records (tests, quick runs)
    canary_repeats: tuple[int, ...] = canary_audit.REPEATS
    canaries_per_repeat: int = 3
    canary_candidates: int = 2000
    seed: int = 0  # the holdout split and the canaries only, never the DP noise
    device: str = "auto"
    # Tests and benchmarks only: seeds the DP noise and the batch sampling so a run repeats. Never
    # from notebooks (not among the service's fields; `jobs.submit` refuses it from the service).
    noise_seed: int | None = None

    @property
    def non_private(self) -> bool:
        return self.epsilon is None

    def validate(self) -> None:
        """Refuse settings that cannot run (BadInput), before anything is recorded or charged."""
        _check_types(self)
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise BadInput("epochs and batch size must be at least 1, max length at least 8")
        if not (0 < self.learning_rate < 10) or not (self.max_grad_norm > 0):
            raise BadInput("learning rate must be in (0, 10) and max grad norm positive")
        if self.accountant not in ACCOUNTANTS:
            raise BadInput(f"accountant must be one of {', '.join(ACCOUNTANTS)}, not {self.accountant!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise BadInput(f"grad sample mode must be one of {', '.join(GRAD_SAMPLE_MODES)}")
        if not 0 <= self.holdout < 0.9:
            raise BadInput("holdout must be in [0, 0.9)")
        if self.batch_size > MAX_BATCH_SIZE or self.max_length > MAX_LENGTH:
            raise BadInput(f"batch size at most {MAX_BATCH_SIZE}, max length at most {MAX_LENGTH} tokens")
        if not MIN_CANDIDATES <= self.canary_candidates <= MAX_CANDIDATES:
            raise BadInput(f"canary candidates must be between {MIN_CANDIDATES} and {MAX_CANDIDATES:,}")
        if not 0 <= self.canaries_per_repeat <= MAX_CANARIES_PER_REPEAT:
            raise BadInput(f"canaries per repetition count must be between 0 and {MAX_CANARIES_PER_REPEAT}")
        if not self.canary_repeats or any(r < 1 or r > 100 for r in self.canary_repeats):
            raise BadInput("canary repetition counts must be between 1 and 100")
        if self.max_records is not None and self.max_records < 1:
            raise BadInput("max records must be at least 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise BadInput(f"device must be auto, cpu or cuda[:N], not {self.device!r}")

    def as_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "canary_repeats": list(self.canary_repeats)}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "FinetuneParams":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "canary_repeats" in values:
            values["canary_repeats"] = tuple(values["canary_repeats"])
        return cls(**values)


# Upper bounds: what the enclave's machines can do in reasonable time (a job runs alone on the
# service's worker), and what the audits need.
MAX_BATCH_SIZE = 4096
MAX_LENGTH = 4096  # also bounded by the base model's n_positions (`check_base`)
MIN_CANDIDATES, MAX_CANDIDATES = 10, 100_000
MAX_CANARIES_PER_REPEAT = 10
_INTS = ("epochs", "batch_size", "max_length", "canaries_per_repeat", "canary_candidates", "seed")
_OPTIONAL_INTS = ("max_records", "noise_seed")
_NUMBERS = ("delta", "learning_rate", "max_grad_norm", "holdout")
_STRINGS = ("accountant", "grad_sample_mode", "device")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_types(params: "FinetuneParams") -> None:
    """JSON gives floats for integers (3.0), booleans for numbers: each field must be of its type."""
    for name in _INTS:
        if not _is_int(getattr(params, name)):
            raise BadInput(f"{name} must be an integer, not {getattr(params, name)!r}")
    for name in _OPTIONAL_INTS:
        value = getattr(params, name)
        if value is not None and not _is_int(value):
            raise BadInput(f"{name} must be an integer, not {value!r}")
    for name in _NUMBERS:
        if name == "delta" and params.epsilon is None and params.delta is None:  # non-private: no delta
            continue
        if not _is_number(getattr(params, name)):
            raise BadInput(f"{name} must be a finite number, not {getattr(params, name)!r}")
    if params.epsilon is not None and not _is_number(params.epsilon):
        raise BadInput(f"epsilon must be a finite number, not {params.epsilon!r}")
    for name in _STRINGS:
        if not isinstance(getattr(params, name), str):
            raise BadInput(f"{name} must be a string")
    if not isinstance(params.train_embeddings, bool):
        raise BadInput("train_embeddings must be true or false")
    if not isinstance(params.canary_repeats, tuple) or not all(_is_int(r) for r in params.canary_repeats):
        raise BadInput("canary_repeats must be a list of integers")


def base_positions(base_dir: str | Path) -> int:
    """The base model's context length (GPT-2's `n_positions`), from its config.json."""
    import json

    try:
        config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BadInput("the base model's config.json is not readable; an operator must look at it") from None
    positions = config.get("n_positions", config.get("max_position_embeddings"))
    if not _is_int(positions) or positions < 8:
        raise BadInput("the base model's config.json gives no context length (n_positions)")
    return positions


def check_base(base_dir: str | Path, params: "FinetuneParams") -> None:
    positions = base_positions(base_dir)
    if params.max_length > positions:
        raise BadInput(f"max length {params.max_length} is more than the base model's {positions} positions")


def planted_count(params: "FinetuneParams") -> int:
    """How many training examples the canaries add (each canary as often as it is repeated)."""
    return params.canaries_per_repeat * sum(params.canary_repeats)


def sample_rate(params: "FinetuneParams", examples: int) -> float:
    """The Poisson sampling rate Opacus will use for `examples` training records: it takes
    1 / len(data_loader), the loader's batches over the records plus the planted canaries."""
    texts = max(1, examples + planted_count(params))
    batch_size = min(params.batch_size, texts)
    return 1 / math.ceil(texts / batch_size)


def noise_multiplier(params: "FinetuneParams", examples: int) -> float:
    """The noise multiplier Opacus will calibrate to (epsilon, delta) for this run, computed as
    `make_private_with_epsilon` does; BadInput when no noise reaches that epsilon (too small for
    the number of steps). Called at submission, so an impossible target is refused before any
    job is recorded or charged."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    if params.epsilon is None:
        raise BadInput("a non-private run has no noise multiplier")
    with warnings.catch_warnings():
        if params.accountant == "prv":  # see `make_private`
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            return float(get_noise_multiplier(target_epsilon=params.epsilon, target_delta=params.delta,
                                              sample_rate=sample_rate(params, examples), epochs=params.epochs,
                                              accountant=params.accountant))
        except ValueError as exc:
            raise BadInput(f"epsilon {params.epsilon:g} cannot be reached with delta {params.delta:g} over "
                           f"{params.epochs} epochs of {examples} records at batch size {params.batch_size} "
                           f"({exc}); ask for a larger epsilon, fewer epochs or a smaller batch") from None


@dataclasses.dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float | None
    epsilon: float | None  # spent so far (the accountant's), None for a non-private run


@dataclasses.dataclass
class FinetuneResult:
    model_dir: Path
    steps: int
    final_loss: float | None
    epsilon_spent: float | None
    noise_multiplier: float | None
    training_examples: int
    records: int
    exposure: dict[str, Any]
    membership: dict[str, Any]
    seconds: float
    device: str


# -- data ----------------------------------------------------------------------------------------

def _render_row(row: dict[str, str]) -> str:
    if _PEOPLE_COLUMNS <= set(row):
        sex_word = "female" if row["sex"] == "F" else "male"
        article = "an" if row["occupation"][:1] in "aeiou" else "a"
        try:
            income = f"{int(row['income']):,}"
        except ValueError:
            income = row["income"]
        return (f"{row['name']}, born {row['dob']}, {sex_word}, ZIP {row['zip']}, works as {article} "
                f"{row['occupation']} and earns ${income} a year.")
    return " ".join(f"{k}: {v}." for k, v in row.items() if k)


DEFAULT_MAX_DATASET_BYTES = 512 * 1024**2  # PrivacySettings.max_dataset_bytes's default


def dataset_records(path: str | Path, *, max_records: int | None = None, sha256: str | None = None,
                    max_bytes: int = DEFAULT_MAX_DATASET_BYTES) -> list[str]:
    """The dataset's records as training text: a CSV/TSV row each, or a non-empty line of a text
    file. With `sha256` (the registered one), a file that changed since is refused, as is one
    larger than `max_bytes` (`datafiles.read_registered`, the DP statistics' checks)."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"dataset {path.name!r} is a folder; fine-tuning needs a CSV or text file")
    text = read_registered(path, max_bytes, sha256).decode("utf-8", errors="replace")
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        records = [_render_row(row) for row in reader]
    else:
        records = [line.strip() for line in text.splitlines() if line.strip()]
    return records[:max_records] if max_records else records


def split_records(records: Sequence[str], params: FinetuneParams) -> tuple[list[str], list[str]]:
    """(training records, held-out records): a seeded shuffle, the held-out share off the end."""
    order = list(range(len(records)))
    random.Random(params.seed).shuffle(order)
    held = int(len(records) * params.holdout)
    keep = sorted(order[:len(order) - held])
    out = sorted(order[len(order) - held:])
    return [records[i] for i in keep], [records[i] for i in out]


def training_examples(records: Sequence[str], params: FinetuneParams) -> int:
    """How many examples a fine-tune of `records` trains on, the n of delta < 1/n: the training
    records (the planted canaries are extra examples, and delta is held to the records)."""
    return len(split_records(records, params)[0])


# -- training ------------------------------------------------------------------------------------

def resolve_device(preference: str) -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput("no CUDA device here; use --device cpu")
    return preference


class SequenceLoss:
    """Mean token cross-entropy per example (labels -100 ignored), then the batch mean: every
    example weighs the same whatever its length. `reduction="none"` gives the per-example losses,
    which Opacus's ghost clipping asks for."""

    def __init__(self) -> None:
        self.reduction = "mean"

    def __call__(self, logits, labels):
        import torch

        flat = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none",
                                                 ignore_index=-100)
        valid = (labels != -100).sum(dim=1).clamp(min=1)
        per_example = flat.sum(dim=1) / valid
        return per_example if self.reduction == "none" else per_example.mean()


def encode(tokenizer, texts: Sequence[str], max_length: int):
    """input_ids, attention_mask and labels for right-padded examples, each after an end-of-text."""
    import torch

    eos = tokenizer.eos_token_id
    ids = torch.full((len(texts), max_length), eos, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for i, text in enumerate(texts):
        row = ([eos] + tokenizer.encode(text))[:max_length]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def load_model(directory: str | Path, *, untie: bool = False):
    """GPT-2 and its tokenizer from a local directory, never the network."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise BadInput(f"no model in {directory} (config.json is missing)")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True)
    model.loss_type = "ForCausalLM"
    if untie and model.lm_head.weight is model.transformer.wte.weight:
        model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
        model.config.tie_word_embeddings = False
    return model, tokenizer


def prepare_trainable(model, params: FinetuneParams) -> list:
    if not params.train_embeddings:
        model.transformer.wte.weight.requires_grad_(False)
        model.transformer.wpe.weight.requires_grad_(False)
        model.lm_head.weight.requires_grad_(model.lm_head.weight is not model.transformer.wte.weight
                                            and params.train_embeddings)
    return [p for p in model.parameters() if p.requires_grad]


def generators(params: FinetuneParams, device: str):
    """(sampling, noise): the batch sampler's generator (CPU) and the DP noise's (on `device`),
    each seeded from `secrets` unless the test-only `noise_seed` is set."""
    import torch

    if params.noise_seed is not None:
        seeds = (params.noise_seed, params.noise_seed + 1)
    else:
        seeds = (secrets.randbits(63), secrets.randbits(63))
    sampling = torch.Generator().manual_seed(seeds[0])
    noise = torch.Generator(device=torch.device(device)).manual_seed(seeds[1])
    return sampling, noise


def make_private(model, optimizer, loader, params: FinetuneParams, *, epochs: int, noise_generator=None):
    """Opacus's engine around the model, optimizer and loader: (engine, model, optimizer, criterion, loader).
    The Poisson sampler keeps the loader's generator; the noise comes from `noise_generator`."""
    import warnings

    from opacus import PrivacyEngine

    # secure_mode needs torchcsprng, which has no wheel for this torch (see the module's note).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=params.accountant, secure_mode=False)
    criterion = SequenceLoss()
    common = dict(module=model, optimizer=optimizer, data_loader=loader, target_epsilon=params.epsilon,
                  target_delta=params.delta, epochs=epochs, max_grad_norm=params.max_grad_norm,
                  grad_sample_mode=params.grad_sample_mode, poisson_sampling=True,
                  noise_generator=noise_generator)
    with warnings.catch_warnings():
        # The PRV accountant sizes its numerical domain with an RDP bound, whose warning about the
        # largest order concerns only that domain; the epsilon calibrated to is PRV's (an upper bound
        # within its eps_error). With the RDP accountant itself the warning matters, so it stays.
        if params.accountant == "prv":
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        if params.grad_sample_mode == "ghost":
            model, optimizer, criterion, loader = engine.make_private_with_epsilon(criterion=criterion, **common)
        else:
            model, optimizer, loader = engine.make_private_with_epsilon(**common)
    return engine, model, optimizer, criterion, loader


def _spent(engine, params: FinetuneParams) -> float:
    """The epsilon the accountant has counted so far (see `make_private` on the warning)."""
    import warnings

    with warnings.catch_warnings():
        if params.accountant == "prv":
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(engine.get_epsilon(params.delta))


def train_step(model, optimizer, criterion, ids, mask, labels) -> float:
    import torch

    import warnings

    positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1).contiguous()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, :-1]
    loss = criterion(logits, labels[:, 1:])
    with warnings.catch_warnings():
        # Opacus's backward hooks on the first block fire with no input gradient when the embeddings are frozen.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


def run(base_dir: str | Path, records: Sequence[str], params: FinetuneParams, out_dir: str | Path, *,
        on_progress: Callable[[Progress], None] | None = None) -> FinetuneResult:
    """Fine-tune the GPT-2 in `base_dir` on `records` (plus planted canaries), save it to `out_dir`
    and audit it. `on_progress` is called after each step (cheaply: epsilon is asked of the
    accountant about every 5% of the run)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress (the CLI's bar, the job row) is the one to show
    params.validate()
    check_base(base_dir, params)
    started = time.monotonic()
    device = resolve_device(params.device)
    train_records, held_out = split_records(records, params)
    if len(train_records) < 2:
        raise BadInput(f"the dataset has {len(records)} usable records; fine-tuning needs more")
    rng = random.Random(params.seed + 1)
    planted = canary_audit.plant(rng, params.canary_repeats, params.canaries_per_repeat)
    texts = list(train_records) + canary_audit.planted_texts(planted)
    sampling, noise_generator = generators(params, device)
    # The global generator draws only dropout's masks; seeded like the others, never from `seed`.
    torch.manual_seed(params.noise_seed if params.noise_seed is not None else secrets.randbits(63))

    untie = params.grad_sample_mode == "ghost" and params.epsilon is not None
    model, tokenizer = load_model(base_dir, untie=untie)
    model.to(device).train()
    trainable = prepare_trainable(model, params)
    ids, mask, labels = encode(tokenizer, texts, params.max_length)
    dataset = torch.utils.data.TensorDataset(ids, mask, labels)
    batch_size = min(params.batch_size, len(texts))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=sampling)
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    engine = None
    criterion = SequenceLoss()
    if params.epsilon is not None:
        engine, model, optimizer, criterion, loader = make_private(model, optimizer, loader, params,
                                                                   epochs=params.epochs,
                                                                   noise_generator=noise_generator)
    total = params.epochs * len(loader)
    every = max(1, total // 20)
    step, loss_value, epsilon_spent = 0, None, None
    for _ in range(params.epochs):
        for batch in loader:
            if batch[0].shape[0] == 0:  # Poisson sampling may draw an empty batch: it still counts
                step += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            ids_b, mask_b, labels_b = (t.to(device) for t in batch)
            loss_value = train_step(model, optimizer, criterion, ids_b, mask_b, labels_b)
            step += 1
            if engine is not None and (step % every == 0 or step == total):
                epsilon_spent = _spent(engine, params)
            if on_progress:
                on_progress(Progress(step, total, loss_value, epsilon_spent))
    if engine is not None:
        epsilon_spent = _spent(engine, params)
    noise = float(optimizer.noise_multiplier) if engine is not None else None

    out_dir = Path(out_dir)
    staged = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    plain = model._module if hasattr(model, "_module") else model
    for p in plain.parameters():  # Opacus leaves per-sample gradients on the parameters
        for attr in ("grad_sample", "_forward_counter", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)
    plain.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    del model, plain, optimizer, engine
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staged.rename(out_dir)

    # Audit what was saved, exactly as the gateway will load it.
    saved, saved_tokenizer = load_model(out_dir)
    saved.to(device).eval()
    exposure = canary_audit.audit(saved, saved_tokenizer, planted, candidates=params.canary_candidates,
                                  seed=params.seed + 2, device=device)
    attack_members = list(train_records)
    if len(attack_members) > len(held_out) and held_out:
        attack_members = random.Random(params.seed + 3).sample(attack_members, len(held_out))
    mia = membership.attack(saved, saved_tokenizer, attack_members, held_out, device=device, seed=params.seed,
                            max_length=params.max_length)
    return FinetuneResult(model_dir=out_dir, steps=step, final_loss=loss_value, epsilon_spent=epsilon_spent,
                          noise_multiplier=noise, training_examples=len(texts), records=len(train_records),
                          exposure=exposure, membership=mia, seconds=round(time.monotonic() - started, 1),
                          device=device)


def summary_lines(result_exposure: dict[str, Any], result_membership: dict[str, Any]) -> list[str]:
    lines = canary_audit.table_lines(result_exposure)
    if "worst_case" in result_membership:
        wc, lt = result_membership["worst_case"], result_membership["loss_threshold"]["metrics"]
        lines.append(f"membership inference (sacroml, {result_membership['members']} members vs "
                     f"{result_membership['non_members']} held out): worst-case AUC {wc['auc_mean']:.3f}, "
                     f"loss-threshold AUC {lt.get('AUC', math.nan):.3f}")
    elif result_membership:
        lines.append(f"membership inference: {result_membership.get('skipped', 'not run')}")
    return lines
