"""The inference engine: continuous (iteration-level) batching of GPT-2 on one background thread.

One thread owns the model. Each iteration it drops the sequences of callers that went away, serves
one scoring job if any is waiting, then runs one forward that carries the next token of every
running sequence together with the prompts of newly admitted ones (as many as there are free
KV-cache slots, within a prefill budget), samples, and retires the finished sequences. A request
therefore joins and leaves the batch at token granularity instead of waiting for a whole batch.

Determinism: each sequence samples with its own `torch.Generator`, drawing exactly one uniform
number per sampled token, and picks the token by inverse CDF over float64 probabilities of its own
row, so sampling never reads another row. A caller's seed is never the generator's seed: that
would let the caller compute the uniform number and read "is CDF(t) > u" off a one-token answer,
bisecting over seeds to probabilities far beyond what the API returns. The generator's seed is an
HMAC, under the engine's sampling secret, of the project, the caller's seed (+ the sample's index)
and the prompt (`derive_seed`): the same seed and prompt give the same text within a project, and
the caller cannot predict a draw. On CPU the forward is batch-invariant too (see
`GPT2Forward`): the same prompt, seed and parameters give the same tokens whatever else is in the
batch, bit for bit. On CUDA (bf16) kernels differ with batch shape, so a near-tie can flip.

Running sequences always occupy slots 0..B-1: a retiring sequence's slot is refilled by moving the
last one down, so a decode step reads the cache through strided views rather than gathering it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from enclave.errors import BadInput, Unavailable
from enclave.gateway.gpt2 import GPT2Forward
from enclave.gateway.model import LoadedModel
from enclave.gateway.settings import CpuKernelSettings

MAX_TOP_TOKENS = 5
# Prompt tokens admitted into one forward alongside the decode tokens. Larger budgets read the
# weights fewer times per prompt but stall the running sequences for longer: on a CPU 512 tokens
# take a few hundred milliseconds; on a GPU the step is mostly launch overhead until far more.
PREFILL_TOKENS_PER_STEP = {"cpu": 512, "cuda": 16384}
RETRY_AFTER_BOUNDS_S = (1, 60)
SAMPLING_SECRET_BYTES = 32


class QueueFull(Unavailable):
    """Too much work is already waiting; try again after `retry_after` seconds (HTTP 503, busy)."""

    code = "busy"

    def __init__(self, retry_after: int):
        super().__init__("the model is at capacity; retry shortly")
        self.retry_after = retry_after


class ContextTooLong(BadInput):
    """The prompt (plus the tokens asked for) does not fit in the model's context."""

    code = "context_exceeded"


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None  # None = the engine picks one
    stop: list[str] = dataclasses.field(default_factory=list)
    # Keep sampling past <|endoftext|>: benchmarks use it so every system makes the same tokens.
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError("temperature must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclasses.dataclass(frozen=True)
class Completion:
    token_ids: list[int]  # every token generated, the end-of-text token included when it ended the text
    text: str  # decoded, without end-of-text, cut before the first stop string
    finish_reason: str  # "stop" (end-of-text or a stop string) or "length"


class GenerationProgress:
    """How many tokens a generation has sampled so far, all its samples together. Only the engine
    thread writes it; a caller that goes away reads it to charge what the call produced before the
    engine noticed (at most one step per sample may follow, which nobody sees or pays for)."""

    def __init__(self) -> None:
        self.tokens = 0


class _Request:
    """One caller's future; the engine thread resolves it on the caller's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.cancelled = False  # set from the event loop when the caller goes away

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        def settle():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the caller's event loop has closed: nobody is left to tell
            pass


def derive_seed(secret: bytes, project: str, seed: int, prompt_ids: list[int]) -> int:
    """The generator's seed for a caller's `seed` (already plus the sample's index): 63 bits of
    HMAC-SHA256 under the sampling secret over (project, seed, prompt token ids), encoded without
    ambiguity. Without the secret the caller cannot compute it, so a draw cannot be predicted."""
    message = json.dumps(["enclave-sampling-v1", project, seed, prompt_ids], separators=(",", ":")).encode("utf-8")
    return int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:8], "big") >> 1


class _Generation(_Request):
    def __init__(self, loop, prompt_ids: list[int], params: SamplingParams, seeds: list[int],
                 progress: GenerationProgress | None = None):
        super().__init__(loop)
        self.prompt_ids, self.params = prompt_ids, params
        self.progress = progress if progress is not None else GenerationProgress()
        self.sequences = [_Sequence(self, i, seed) for i, seed in enumerate(seeds)]
        self.unfinished = len(seeds)


class _Job(_Request):
    """A scoring or next-token job: one function of the model, run between iterations."""

    def __init__(self, loop, work: Callable[[GPT2Forward], object]):
        super().__init__(loop)
        self.work = work


class _Sequence:
    def __init__(self, request: _Generation, index: int, seed: int):
        self.request, self.index = request, index
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.slot = -1
        self.finish_reason: str | None = None
        self.text = ""
        self.started = 0.0

    @property
    def position(self) -> int:
        """Where the last sampled token goes in the cache when it is fed back."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1

    @property
    def cached(self) -> int:
        """How many positions of its slot hold this sequence's keys and values."""
        return len(self.request.prompt_ids) + max(0, len(self.tokens) - 1)


class Engine:
    def __init__(self, loaded: LoadedModel, *, max_batch: int = 32, max_queue: int = 256,
                 kernel_settings: CpuKernelSettings = CpuKernelSettings(), sampling_secret: bytes | None = None):
        """`sampling_secret` keys the seeds (`derive_seed`); None: a random one, so seeded outputs
        reproduce only until the engine is made again (the app installs the service's kept secret
        with `use_sampling_secret`)."""
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.use_sampling_secret(sampling_secret if sampling_secret is not None
                                 else secrets.token_bytes(SAMPLING_SECRET_BYTES))
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.context_length = int(loaded.config.n_positions)
        self.eos_token_id = loaded.config.eos_token_id
        self.vocab_size = int(loaded.config.vocab_size)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.forward = GPT2Forward(loaded.model, max_slots=max_batch, kernel_settings=kernel_settings)
        self.prefill_budget = PREFILL_TOKENS_PER_STEP[loaded.device.type]
        self._lock = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._jobs: deque[_Job] = deque()
        # The engine thread's own (others only read its length); running[i].slot == i.
        self._running: list[_Sequence] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seconds_per_sequence = 1.0  # moving average, for Retry-After

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            # A new thread starts with OpenMP's default thread count, not the caller's setting.
            threads = torch.get_num_threads()
            if self.loaded.device.type == "cpu":
                _release_callers_openmp_pool()
            self._thread = threading.Thread(target=self._loop, args=(threads,), name="enclave-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread; whatever was waiting or running fails with RuntimeError."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        gone = RuntimeError("the engine was closed")
        for request in {s.request for s in (*self._waiting, *self._running)} | set(self._jobs):
            request.resolve(error=gone)
        self._waiting.clear(), self._jobs.clear(), self._running.clear()

    def use_sampling_secret(self, secret: bytes) -> None:
        """Key the seeds of later generations with `secret` (at least 32 bytes)."""
        if len(secret) < SAMPLING_SECRET_BYTES:
            raise ValueError(f"the sampling secret must be at least {SAMPLING_SECRET_BYTES} bytes")
        self._sampling_secret = bytes(secret)

    def model_info(self) -> dict:
        return self.loaded.model_info()

    def stats(self) -> dict:
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._waiting) + len(self._jobs),
                    "slots": self.max_batch}

    # -- the API --------------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], params: SamplingParams, n: int = 1,
                       project: str = "", progress: GenerationProgress | None = None) -> list[Completion]:
        """n completions of one prompt, with seeds seed, seed+1, ..., each keyed with the project
        and the prompt (`derive_seed`); with no seed, random ones. Cancelling the awaiting task
        drops its sequences at the next iteration; `progress` counts the tokens sampled until then."""
        self._check_ids(prompt_ids)
        if n < 1:
            raise ValueError("n must be at least 1")
        if len(prompt_ids) + params.max_new_tokens > self.context_length:
            raise ContextTooLong(f"{len(prompt_ids)} prompt tokens + {params.max_new_tokens} new tokens "
                                 f"exceed the context of {self.context_length}")
        if params.seed is None:
            seeds = [secrets.randbits(63) for _ in range(n)]
        else:
            seeds = [derive_seed(self._sampling_secret, project, params.seed + i, list(prompt_ids)) for i in range(n)]
        request = _Generation(asyncio.get_running_loop(), list(prompt_ids), params, seeds, progress)
        self._enqueue(request.sequences, n)
        return await self._wait(request)

    async def score(self, token_ids: list[int]) -> list[float]:
        """ln P(token_i | tokens before it) for i = 1..T-1, in float32."""
        self._check_ids(token_ids)
        if len(token_ids) < 2:
            return []

        def work(forward: GPT2Forward) -> list[float]:
            logits = forward.sequence_logits(token_ids[:-1]).float()
            following = torch.as_tensor(token_ids[1:], device=logits.device)[:, None]
            return torch.log_softmax(logits, dim=-1).gather(1, following)[:, 0].tolist()

        return await self._job(work)

    async def next_token(self, token_ids: list[int], k: int) -> list[tuple[int, float]]:
        """The k (<= 5) most probable next tokens with their probabilities."""
        self._check_ids(token_ids)
        if not 1 <= k <= MAX_TOP_TOKENS:
            raise ValueError(f"k must be between 1 and {MAX_TOP_TOKENS}")

        def work(forward: GPT2Forward) -> list[tuple[int, float]]:
            probs = torch.softmax(forward.sequence_logits(token_ids)[-1].float(), dim=-1)
            top = torch.topk(probs, k)
            return list(zip(top.indices.tolist(), top.values.tolist()))

        return await self._job(work)

    async def activations(self, token_ids: list[int], hooks: list[str], positions: list[int]) -> dict:
        """Activations at `hooks` (TransformerLens names) for `positions` of one sequence, as
        float16 CPU tensors (`GPT2Forward.activations`): a job between iterations, like scoring,
        so the weights are read by one thread and the queue bounds these calls too."""
        self._check_ids(token_ids)
        return await self._job(lambda forward: forward.activations(token_ids, hooks, positions))

    def dimensions(self) -> dict:
        """The sizes callers of the activations endpoint need (public for any GPT-2 checkpoint)."""
        config = self.loaded.config
        return {"n_layer": int(config.n_layer), "d_model": int(config.n_embd), "n_head": int(config.n_head),
                "d_mlp": int(config.n_inner or 4 * config.n_embd), "vocab": self.vocab_size,
                "context": self.context_length}

    # -- submission (event-loop side) -------------------------------------------------------------

    def _check_ids(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) > self.context_length:
            raise ContextTooLong(f"{len(token_ids)} tokens exceed the context of {self.context_length}")
        if any(not 0 <= t < self.vocab_size for t in token_ids):
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")

    def _enqueue(self, sequences: list[_Sequence], weight: int) -> None:
        with self._lock:
            if self._thread is None or self._stopping:
                raise RuntimeError("the engine is not running")
            waiting = len(self._waiting) + len(self._jobs)
            if waiting + weight > self.max_queue:
                raise QueueFull(self._retry_after(waiting))
            self._waiting.extend(sequences)
            self._lock.notify()

    async def _job(self, work: Callable[[GPT2Forward], object]):
        job = _Job(asyncio.get_running_loop(), work)
        with self._lock:
            if self._thread is None or self._stopping:
                raise RuntimeError("the engine is not running")
            waiting = len(self._waiting) + len(self._jobs)
            if waiting + 1 > self.max_queue:
                raise QueueFull(self._retry_after(waiting))
            self._jobs.append(job)
            self._lock.notify()
        return await self._wait(job)

    async def _wait(self, request: _Request):
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled = True
            with self._lock:
                self._lock.notify()
            raise

    def _retry_after(self, waiting: int) -> int:
        """Seconds until the waiting sequences have probably been admitted: a batch's worth of
        sequences leaves about every `_seconds_per_sequence`."""
        low, high = RETRY_AFTER_BOUNDS_S
        estimate = self._seconds_per_sequence * max(1, waiting) / self.max_batch
        return int(min(high, max(low, math.ceil(estimate))))

    # -- the engine thread ----------------------------------------------------------------------

    def _loop(self, threads: int) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._stopping or self._waiting or self._jobs or self._running):
                        self._lock.wait()
                    if self._stopping:
                        return
                    self._drop_cancelled_waiting()
                    admitted = self._take_admissions()
                    job = self._jobs.popleft() if self._jobs else None
                self._guarded(self._retire_cancelled, self._running)
                if job is not None and not job.cancelled:
                    self._run_job(job)
                self._guarded(lambda: self._iterate(admitted), self._running + admitted)

    def _take_admissions(self) -> list[_Sequence]:
        """Waiting sequences for the free slots, in order, while their prompts fit this step's
        prefill budget (the first always fits, so a long prompt cannot starve)."""
        admitted, prompts_seen, budget = [], set(), self.prefill_budget
        while self._waiting and len(self._running) + len(admitted) < self.max_batch:
            request = self._waiting[0].request
            cost = 0 if id(request) in prompts_seen else len(request.prompt_ids)
            if admitted and cost > budget:
                break
            budget -= cost
            prompts_seen.add(id(request))
            admitted.append(self._waiting.popleft())
        return admitted

    def _guarded(self, work: Callable[[], None], sequences: list[_Sequence]) -> None:
        """Run `work`; if the model fails, fail the requests involved rather than the thread."""
        try:
            work()
        except Exception as exc:  # a bug or out-of-memory must not take the whole engine down
            failed = {s.request for s in sequences}
            for request in failed:
                request.resolve(error=exc)
            self._running = [s for s in self._running if s.request not in failed]
            for slot, sequence in enumerate(self._running):
                if sequence.slot != slot:
                    self.forward.copy_slot(sequence.slot, slot, sequence.cached)
                    sequence.slot = slot

    def _run_job(self, job: _Job) -> None:
        try:
            job.resolve(job.work(self.forward))
        except Exception as exc:
            job.resolve(error=exc)

    def _drop_cancelled_waiting(self) -> None:
        if any(s.request.cancelled for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if not s.request.cancelled)
        if any(j.cancelled for j in self._jobs):
            self._jobs = deque(j for j in self._jobs if not j.cancelled)

    def _retire_cancelled(self) -> None:
        self._retire([i for i, s in enumerate(self._running) if s.request.cancelled])

    def _iterate(self, admitted: list[_Sequence]) -> None:
        """One forward: the next token of every running sequence, plus the prompts of the newly
        admitted ones (each prompt once, shared by its request's n sequences); then sample."""
        decoding = len(self._running)
        now = time.perf_counter()
        prompts: list[tuple[int, list[int]]] = []
        prompt_rows: dict[int, tuple[int, int]] = {}  # request id -> (logits row, slot prefilled)
        for sequence in admitted:
            if sequence.request.cancelled:
                continue
            sequence.slot, sequence.started = len(self._running), now
            self._running.append(sequence)
            if id(sequence.request) not in prompt_rows:
                prompt_rows[id(sequence.request)] = (decoding + len(prompts), sequence.slot)
                prompts.append((sequence.slot, sequence.request.prompt_ids))
        if not self._running:
            return
        old = self._running[:decoding]
        logits = self.forward.forward(range(decoding), [s.tokens[-1] for s in old], [s.position for s in old], prompts)
        rows = list(range(decoding))
        for sequence in self._running[decoding:]:
            row, prefilled = prompt_rows[id(sequence.request)]
            if sequence.slot != prefilled:
                self.forward.copy_slot(prefilled, sequence.slot, len(sequence.request.prompt_ids))
            rows.append(row)
        self._advance(self._running, logits if len(rows) == logits.shape[0] else logits[rows])

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample the next token of each sequence from its logits row; retire the finished ones."""
        tokens = sample(logits, [s.request.params for s in sequences], [s.generator for s in sequences])
        for sequence, token in zip(sequences, tokens):
            sequence.tokens.append(token)
            sequence.request.progress.tokens += 1
            self._check_finished(sequence)
        self._retire([i for i, s in enumerate(self._running) if s.finish_reason is not None])

    def _check_finished(self, sequence: _Sequence) -> None:
        params = sequence.request.params
        token = sequence.tokens[-1]
        if token == self.eos_token_id and not params.ignore_eos:
            sequence.finish_reason = "stop"
            sequence.text = self.tokenizer.decode(sequence.tokens[:-1])
            return
        if params.stop:
            text = self.tokenizer.decode(sequence.tokens)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                sequence.finish_reason, sequence.text = "stop", text[:cut]
                return
        if len(sequence.tokens) >= params.max_new_tokens:
            sequence.finish_reason = "length"
            sequence.text = self.tokenizer.decode(sequence.tokens)

    def _retire(self, indices: list[int]) -> None:
        """Free the slots at `indices`, keeping running sequences in slots 0..B-1."""
        now = time.perf_counter()
        for index in sorted(indices, reverse=True):
            sequence = self._running[index]
            last = self._running.pop()
            if last is not sequence:
                self.forward.copy_slot(last.slot, index, last.cached)
                last.slot = index
                self._running[index] = last
            if sequence.finish_reason is not None:
                self._seconds_per_sequence += 0.1 * (now - sequence.started - self._seconds_per_sequence)
                self._finished(sequence)

    def _finished(self, sequence: _Sequence) -> None:
        request = sequence.request
        request.unfinished -= 1
        if request.unfinished == 0:
            request.resolve([Completion(s.tokens, s.text, s.finish_reason) for s in request.sequences])


def _release_callers_openmp_pool() -> None:
    """Free the calling thread's idle OpenMP workers (OpenMP 5's omp_pause_resource_all).

    libgomp stops spin-waiting as soon as it manages more threads than there are CPUs, idle pools
    included: its workers then sleep after every parallel region and each of the hundreds of small
    regions in a decode step pays a wake-up. The pool left by the thread that loaded the model would
    tip a small machine over that line; freeing it made the engine thread's decode step 1.5x faster
    on 2 cores. If the caller runs parallel work again, libgomp simply makes a new pool.
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line), None)
        if path is not None:
            ctypes.CDLL(path).omp_pause_resource_all(2)  # omp_pause_hard
    except (OSError, AttributeError):  # not Linux, or an OpenMP without it: only slower
        pass


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """One token per row: greedy rows by argmax; the others after temperature, top-k and top-p (in
    float32), by inverse CDF over float64 probabilities with one uniform draw from the row's own
    generator, so a row's token depends only on that row."""
    logits = logits.float()
    greedy = [i for i, p in enumerate(params) if p.temperature == 0]
    if len(greedy) == len(params):  # all greedy: no copy of the rows first
        return logits.argmax(dim=-1).tolist()
    chosen = [0] * len(params)
    if greedy:
        for i, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist()):
            chosen[i] = token
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return chosen
    picked = [params[i] for i in rows]
    x = logits[rows] / torch.tensor([p.temperature for p in picked], device=logits.device)[:, None]
    x = _top_k(x, [p.top_k for p in picked])
    x = _top_p(x, [p.top_p for p in picked])
    probs = torch.softmax(x.double(), dim=-1)
    cdf = probs.cumsum(dim=-1)
    draws = torch.cat([torch.rand(1, generator=generators[i], dtype=torch.float64) for i in rows])
    targets = draws.to(cdf.device)[:, None] * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, targets, right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)
    for i, token in zip(rows, tokens.tolist()):
        chosen[i] = token
    return chosen


def _top_k(x: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """Keep each row's k largest logits (ties at the k-th kept); k = 0 keeps all."""
    if not any(ks):
        return x
    vocab = x.shape[1]
    largest = torch.topk(x, min(max(ks), vocab), dim=-1).values
    kth = torch.tensor([min(k, vocab) - 1 if k else 0 for k in ks], device=x.device)[:, None]
    threshold = largest.gather(1, kth)
    threshold[torch.tensor([k == 0 for k in ks], device=x.device)] = -math.inf
    return x.masked_fill(x < threshold, -math.inf)


def _top_p(x: torch.Tensor, ps: list[float]) -> torch.Tensor:
    """Keep each row's smallest set of most probable tokens whose mass reaches p; p = 1 keeps all."""
    if all(p >= 1.0 for p in ps):
        return x
    ordered, order = torch.sort(x, dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the more probable tokens
    drop = before >= torch.tensor(ps, device=x.device)[:, None]
    return x.masked_fill(drop.scatter(1, order, drop), -math.inf)

