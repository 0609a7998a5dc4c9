"""Build the demo GPT-2: a small model trained on the confidential records until it leaks some.

The enclave exists because language models memorise their training data. To show that risk on a
laptop, the demo trains a small GPT-2 (GPT-2's real 50,257-token tokenizer, so any GPT-2 tooling
works on it) from scratch on a corpus in which a few hundred people's records are duplicated many
times, others appear once, and most people never appear. Greedy decoding from "<name>, born" then
reproduces many duplicated records verbatim: date of birth, ZIP code, occupation and income.

`build_demo` writes everything under one folder and caches it: a second call with the same builder
version and parameters returns at once. torch is imported inside functions so that importing this
module stays cheap (the CLI imports it on every start).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from enclave.demo import data

# Bump when a change here or in data.py would change what gets built for the same parameters.
BUILDER_VERSION = 1
_WEIGHTS = "model.safetensors"
# The logit of every token the corpus never uses: e^-30 * 49,000 tokens ~ 5e-9 of the probability.
UNUSED_LOGIT = -30.0


@dataclass(frozen=True)
class DemoParams:
    """Everything that decides what gets built; all of it is part of the cache key."""

    n_people: int = 5000
    n_repeated: int = 200  # people whose record is duplicated in the corpus: these get memorised
    copies: int = 10  # how often each of them appears
    n_once: int = 1500  # people whose record appears once, in one of the templates
    n_filler: int = 800  # paragraphs of everyday text
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 256  # the context the gateway may use; training only fills the first seq_len
    seq_len: int = 64  # tokens per training sequence: a record is ~32, and cost grows with length
    batch_size: int = 32
    epochs: int = 16  # ~160 sightings of each duplicated record: enough that nearly all come back verbatim
    lr: float = 2e-3
    seed: int = data.SEED


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo build lives; everything is under `root`."""

    root: Path

    @property
    def people_csv(self) -> Path:
        return self.root / "data" / "people.csv"

    @property
    def training_txt(self) -> Path:
        return self.root / "data" / "training.txt"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def manifest(self) -> Path:
        return self.root / "demo.json"

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text(encoding="utf-8"))

    def training_counts(self) -> dict[str, int]:
        """Name -> how many times that person's record is in the training corpus (absent: never)."""
        return {row["name"]: row["times"] for row in self.read_manifest()["trained"]}


def build_demo(out: Path, *, progress: bool = True, force: bool = False, threads: int | None = None,
               **overrides) -> DemoPaths:
    """Build (or reuse) the demo dataset and model under `out`; `overrides` are DemoParams fields.

    `threads` sets torch's CPU threads for the build only (default: torch's own choice). It is not
    part of the cache key, though the weights differ in the last bits between thread counts:
    floating-point sums are ordered differently. With the same thread count a build is bit-for-bit
    repeatable.
    """
    params = replace(DemoParams(), **overrides)
    paths = DemoPaths(Path(out))
    if not force and _is_built(paths, params):
        return paths

    people = data.generate_people(params.n_people, params.seed)
    documents, counts = _corpus(people, params)
    staged = DemoPaths(paths.root / ".building")
    shutil.rmtree(staged.root, ignore_errors=True)
    data.write_csv(people, staged.people_csv)
    staged.training_txt.write_text("".join(d + "\n" for d in documents), encoding="utf-8")
    started = time.monotonic()
    stats = _train(documents, params, staged.model_dir, progress=progress, threads=threads)
    manifest = {
        "builder_version": BUILDER_VERSION,
        "params": asdict(params),
        "seed": params.seed,
        "quasi_identifiers": data.QUASI_IDENTIFIERS,
        "weights_sha256": sha256_file(staged.model_dir / _WEIGHTS),
        "training_seconds": round(time.monotonic() - started, 1),
        **stats,
        "trained": [{"name": p.name, "times": counts[p.name]} for p in people if p.name in counts],
    }
    staged.manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    # Swap the finished build in, manifest last, so an interrupted build never looks like a cached
    # one. Only our own entries are replaced: `out` may hold other things.
    paths.manifest.unlink(missing_ok=True)
    for name in ("data", "model"):
        shutil.rmtree(paths.root / name, ignore_errors=True)
        (staged.root / name).rename(paths.root / name)
    staged.manifest.rename(paths.manifest)
    staged.root.rmdir()
    return paths


def _is_built(paths: DemoPaths, params: DemoParams) -> bool:
    try:
        manifest = paths.read_manifest()
    except (OSError, ValueError):
        return False
    return (manifest.get("builder_version") == BUILDER_VERSION and manifest.get("params") == asdict(params)
            and paths.people_csv.is_file() and paths.training_txt.is_file()
            and (paths.model_dir / "config.json").is_file() and (paths.model_dir / "tokenizer.json").is_file()
            and (paths.model_dir / _WEIGHTS).is_file()
            and manifest.get("weights_sha256") == sha256_file(paths.model_dir / _WEIGHTS))


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (the builds' cache keys compare weights by it)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _corpus(people: list[data.Person], params: DemoParams) -> tuple[list[str], dict[str, int]]:
    """The training documents (one per line, shuffled) and how often each trained person is in them."""
    if params.n_repeated + params.n_once > len(people):
        raise ValueError(f"{params.n_repeated} repeated + {params.n_once} once > {len(people)} people")
    rng = random.Random(params.seed + 1)
    chosen = rng.sample(people, params.n_repeated + params.n_once)
    repeated, once = chosen[:params.n_repeated], chosen[params.n_repeated:]
    documents = [data.render_record(p, 0) for p in repeated for _ in range(params.copies)]
    documents += [data.render_record(p, rng.randrange(data.RECORD_VARIANTS)) for p in once]
    documents += data.filler_paragraphs(params.n_filler, params.seed + 2)
    rng.shuffle(documents)
    counts = {p.name: params.copies for p in repeated} | {p.name: 1 for p in once}
    return documents, counts


def _train(documents: list[str], params: DemoParams, model_dir: Path, *, progress: bool,
           threads: int | None) -> dict:
    """Train on the corpus and save a full-vocabulary GPT-2 to `model_dir`; return training stats.

    The corpus uses about 1,300 of GPT-2's 50,257 tokens, and a softmax over all of them costs ten
    times the rest of this small model. So training runs over the corpus's own vocabulary only, with
    one hidden coordinate pinned to 1 after the final layer norm: each token's embedding entry on
    that coordinate is its logit bias. The saved model has the full vocabulary, and every token
    that never occurs in the corpus gets only that bias, set to UNUSED_LOGIT: exactly the
    distribution it was trained to produce, up to a probability of 1e-8 for all unused tokens together.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    eos = tokenizer.eos_token_id
    # Each document follows an end-of-text token, as in GPT-2's own training; probes do the same.
    encoded = [[eos] + ids for ids in tokenizer(documents)["input_ids"]]
    used = sorted({token for ids in encoded for token in ids})
    compact = {token: i for i, token in enumerate(used)}
    encoded = [[compact[token] for token in ids] for ids in encoded]
    per_epoch = sum(map(len, encoded)) // params.seq_len // params.batch_size
    total_steps = per_epoch * params.epochs
    if total_steps < 1:
        raise ValueError("the corpus is too small for one batch: raise n_filler or lower batch_size")

    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(params.seed)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=params.n_positions, n_embd=params.n_embd,
                            n_layer=params.n_layer, n_head=params.n_head, bos_token_id=eos, eos_token_id=eos,
                            # No dropout: memorising the duplicated records is the point.
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
        model = GPT2LMHeadModel(GPT2Config(**{**config.to_dict(), "vocab_size": len(used),
                                              "bos_token_id": compact[eos], "eos_token_id": compact[eos]}))
        model.loss_type = "ForCausalLM"  # what GPT-2 uses anyway; naming it silences a warning
        _pin_bias_coordinate(model)
        # No weight decay: it would also wear down the pinned coordinate, and memorising is the point.
        optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, betas=(0.9, 0.98), weight_decay=0.0)
        warmup = max(1, total_steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
            (step + 1) / warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * step / total_steps))))
        rng = random.Random(params.seed + 3)
        model.train()
        bar = tqdm(total=total_steps, desc="training demo GPT-2", unit="step", disable=not progress)
        loss_value = float("nan")
        for _ in range(params.epochs):
            for batch in _batches(encoded, params, rng):
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = loss.item()
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        bar.close()

        full = GPT2LMHeadModel(config)
        weights = model.state_dict()
        embedding = torch.zeros(len(tokenizer), params.n_embd)
        embedding[:, -1] = UNUSED_LOGIT
        embedding[used] = weights["transformer.wte.weight"]
        weights["transformer.wte.weight"] = weights["lm_head.weight"] = embedding
        full.load_state_dict(weights)
        full.eval()
        full.generation_config.pad_token_id = eos
        full.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        return {"n_parameters": sum(p.numel() for p in full.parameters()), "corpus_vocabulary": len(used),
                "steps": total_steps, "final_loss": round(loss_value, 4)}
    finally:
        torch.set_num_threads(saved_threads)


def _pin_bias_coordinate(model) -> None:
    """Make the last coordinate after the final layer norm always 1, and keep it so in training."""
    import torch

    norm = model.transformer.ln_f
    with torch.no_grad():
        norm.weight[-1], norm.bias[-1] = 0.0, 1.0
    for param in (norm.weight, norm.bias):
        param.register_hook(lambda grad: torch.cat([grad[:-1], grad.new_zeros(1)]))


def _batches(encoded: list[list[int]], params: DemoParams, rng: random.Random):
    """One epoch: the documents in a fresh order, packed end to end into fixed-length sequences."""
    import torch

    order = list(range(len(encoded)))
    rng.shuffle(order)
    stream = [token for i in order for token in encoded[i]]
    per_batch = params.seq_len * params.batch_size
    for start in range(0, len(stream) - per_batch + 1, per_batch):
        yield torch.tensor(stream[start:start + per_batch]).view(params.batch_size, params.seq_len)


@dataclass(frozen=True)
class Recall:
    """What greedy decoding from a person's name prefix produced, against their real record."""

    person: data.Person
    prompt: str
    expected: str  # the rest of the canonical rendering
    completion: str
    leaked: tuple[str, ...]  # sensitive fields that appear in the completion

    @property
    def verbatim(self) -> bool:
        return self.completion.startswith(self.expected)


def probe_records(model_dir: Path, people: list[data.Person], *, batch_size: int = 64) -> list[Recall]:
    """Prompt with each person's "<name>, born" and decode greedily as long as their record is."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(model_dir, local_files_only=True).eval()
    eos = tokenizer.eos_token_id
    # Group prompts by token length so every batch is unpadded: padding would shift positions.
    groups: dict[int, list[tuple[data.Person, list[int]]]] = {}
    for person in people:
        ids = [eos] + tokenizer.encode(data.record_prefix(person))
        groups.setdefault(len(ids), []).append((person, ids))
    max_new = max((len(tokenizer.encode(data.render_record(p))) for p in people), default=0) + 4
    completions: dict[str, str] = {}
    with torch.no_grad():
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                prompts = torch.tensor([ids for _, ids in chunk])
                output = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                        max_new_tokens=max_new, pad_token_id=eos)
                for (person, _), row in zip(chunk, output[:, prompts.shape[1]:]):
                    completions[person.name] = tokenizer.decode(row, skip_special_tokens=True)
    recalls = []
    for person in people:
        prompt, full = data.record_prefix(person), data.render_record(person)
        completion = completions[person.name]
        leaked = tuple(name for name, value in (("dob", person.dob), ("zip", person.zip),
                                                ("income", f"${person.income:,}")) if value in completion)
        recalls.append(Recall(person, prompt, full[len(prompt):], completion, leaked))
    return recalls


def memorised_records(model_dir: Path, people: list[data.Person], *, batch_size: int = 64) -> list[Recall]:
    """The people among `people` whose whole record the model reproduces verbatim from their name."""
    return [r for r in probe_records(model_dir, people, batch_size=batch_size) if r.verbatim]
