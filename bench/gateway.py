"""Benchmark: the gateway's continuous batching against a naive server and Hugging Face static batching.

    .venv/bin/python bench/gateway.py [--json] [--clients N] [--model random-124m|demo|DIR]
                                      [--device cpu|cuda] [--in-process] [--gateways N [--db-url URL]]
                                      [--activations [--hooks NAME,...]]

One fixed, seeded workload of requests with mixed prompt lengths (8-200 tokens) and output lengths
(16-128 tokens), clipped to the model's context, runs through every system side by side in one run:

- naive: one `model.generate` per request, one request at a time (a server without batching);
- static batch: batches of N requests, left-padded, one `generate` per batch run to the batch's
  longest `max_new_tokens` (only the tokens each request asked for count as useful);
- engine (in-process): our Engine, N concurrent asyncio clients;
- gateway (HTTP): `enclave serve gateway` in a temporary enclave, N concurrent HTTP clients.

With --activations it measures something else: the workload's prompts through /v1/activations
(default hooks: the residual stream after every block) against the same prompts through /v1/score,
in the engine (with the route's float16 encoding) and over HTTP, and prints the ratio.

Every system decodes greedily and ignores end-of-text (`ignore_eos` for ours, `eos_token_id=None`
for Hugging Face), so each produces exactly the tokens asked for and tokens/s compare like with like.
Latency is what a client sees with N clients each sending its next request as soon as the previous
one returns (closed loop). For the naive server that is a FIFO replay of its measured per-request
times; for static batching it is the wall time of the request's batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from enclave.gateway.settings import GatewaySettings, keep_hub_offline  # noqa: E402

keep_hub_offline()  # before transformers is imported, as the gateway's start-up does

import torch  # noqa: E402

from enclave.gateway import cpu_kernels  # noqa: E402
from enclave.gateway.engine import Engine, SamplingParams  # noqa: E402
from enclave.gateway.model import LoadedModel, load_model  # noqa: E402

# The CPU kernels as the gateway would use them here (ENCLAVE_CPU_KERNELS, CXX, the enclave cache).
KERNELS = GatewaySettings.from_env(model_dir="unused").kernels

PROMPT_TOKENS = (8, 200)
NEW_TOKENS = (16, 128)
WORKLOAD_SEED = 20240611
WORDS = ("the of and to in is was for on that with as by at from his her an which are were be this has had not "
         "but they their its one all been who more when will would there can into some time people year first "
         "city river history council village census survey record school church station market family "
         "children work hospital land north south water county library university study village found "
         "between during after before under later early small large local national public new old "
         "century report number population built named known became remained largest").split()


@dataclass(frozen=True)
class Request:
    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int


@dataclass
class Result:
    system: str
    tokens: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 2),
                "p50_latency_s": round(self.percentile(0.5), 3), "p95_latency_s": round(self.percentile(0.95), 3),
                "requests": len(self.latencies), **({"note": self.note} if self.note else {})}


# -- models and the workload --------------------------------------------------------------------

def build_random_124m(folder: Path) -> Path:
    """GPT-2 124M's architecture (GPT2Config() defaults) with seeded random weights, real tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def resolve_model(spec: str, scratch: Path) -> Path:
    if spec == "random-124m":
        return build_random_124m(scratch / "random-124m")
    if spec == "demo":
        from enclave.demo.model import build_demo
        from enclave.envsettings import enclave_home

        return build_demo(enclave_home() / "demo", progress=False).model_dir  # cached after the first build
    return Path(spec)


def make_workload(tokenizer, n: int, context: int) -> list[Request]:
    """Seeded requests: prompts of random English-ish words, lengths clipped so each fits the context."""
    rng = random.Random(WORKLOAD_SEED)
    longest_prompt = min(PROMPT_TOKENS[1], context // 2)
    longest_output = min(NEW_TOKENS[1], context - longest_prompt)
    requests = []
    for _ in range(n):
        target = rng.randint(PROMPT_TOKENS[0], longest_prompt)
        words: list[str] = []
        while len(tokenizer.encode(" ".join(words))) < target:
            words.append(rng.choice(WORDS))
        ids = tokenizer.encode(" ".join(words))[:target]
        prompt = tokenizer.decode(ids)
        ids = tokenizer.encode(prompt)  # what the gateway will see for this text
        requests.append(Request(prompt, ids, rng.randint(NEW_TOKENS[0], longest_output)))
    return requests


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- the baselines --------------------------------------------------------------------------------

def hf_generate(model, input_ids, attention_mask, max_new_tokens: int):
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                          do_sample=False, eos_token_id=None, pad_token_id=50256)


def run_naive(loaded: LoadedModel, workload: list[Request], clients: int, limit: int) -> Result:
    """One generate per request, sequentially, on the first `limit` requests."""
    model, device = loaded.model, loaded.device
    hf_generate(model, torch.tensor([[464, 3290]], device=device), None, 2)  # warm-up
    service, tokens = [], 0
    for request in workload[:limit]:
        ids = torch.tensor([request.prompt_ids], device=device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = hf_generate(model, ids, torch.ones_like(ids), request.max_new_tokens)
        synchronize(device)
        service.append(time.perf_counter() - started)
        assert out.shape[1] - ids.shape[1] == request.max_new_tokens
        tokens += request.max_new_tokens
    note = f"first {limit} of {len(workload)} requests" if limit < len(workload) else ""
    return Result("naive (HF generate, one at a time)", tokens, sum(service), closed_loop_latencies(service, clients), note)


def closed_loop_latencies(service: list[float], clients: int) -> list[float]:
    """Latencies of a FIFO one-at-a-time server whose `clients` clients each resend at once: request
    i is sent when request i-clients finishes."""
    finish, now = [], 0.0
    for i, seconds in enumerate(service):
        now += seconds
        finish.append(now)
    return [finish[i] - (finish[i - clients] if i >= clients else 0.0) for i in range(len(service))]


def run_static(loaded: LoadedModel, workload: list[Request], clients: int) -> Result:
    """Batches of `clients` requests, left-padded, each generated to the batch's longest request."""
    model, device = loaded.model, loaded.device
    hf_generate(model, torch.tensor([[464, 3290]] * 2, device=device), None, 2)  # warm-up
    seconds, tokens, latencies = 0.0, 0, []
    for start in range(0, len(workload), clients):
        batch = workload[start:start + clients]
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), 50256, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[row, width - len(request.prompt_ids):] = 1
        longest = max(r.max_new_tokens for r in batch)
        started = time.perf_counter()
        with torch.inference_mode():
            out = hf_generate(model, ids.to(device), mask.to(device), longest)
        synchronize(device)
        elapsed = time.perf_counter() - started
        assert out.shape[1] - width == longest
        seconds += elapsed
        tokens += sum(r.max_new_tokens for r in batch)
        latencies += [elapsed] * len(batch)
    return Result("static batch (HF generate, padded)", tokens, seconds, latencies)


# -- ours -----------------------------------------------------------------------------------------

async def closed_loop(workload: list[Request], clients: int, send) -> tuple[float, list[float]]:
    """`clients` workers each send the next unsent request as soon as their previous one returns."""
    queue = list(reversed(workload))
    latencies: list[float] = []

    async def client():
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            await send(request)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def run_engine(loaded: LoadedModel, workload: list[Request], clients: int) -> Result:
    engine = Engine(loaded, max_batch=clients, max_queue=max(256, clients), kernel_settings=KERNELS)
    engine.start()
    tokens = 0

    async def send(request: Request) -> None:
        nonlocal tokens
        params = SamplingParams(max_new_tokens=request.max_new_tokens, temperature=0, seed=0, ignore_eos=True)
        [completion] = await engine.generate(request.prompt_ids, params)
        assert len(completion.token_ids) == request.max_new_tokens
        tokens += request.max_new_tokens

    try:
        asyncio.run(closed_loop(workload[:clients], clients, send))  # warm-up
        tokens = 0
        seconds, latencies = asyncio.run(closed_loop(workload, clients, send))
    finally:
        engine.close()
    return Result("engine (in-process, continuous batching)", tokens, seconds, latencies)


def gateway_available() -> bool:
    """The HTTP run needs the project's venv (`make` builds it); a bare GPU image has none."""
    return (REPO / ".venv" / "bin" / "enclave").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_http(model_dir: Path, workload: list[Request], clients: int, device: str, threads: int, log,
             gateways: int = 1, db_url: str | None = None, call: str = "generate",
             hooks: list[str] | None = None) -> Result:
    """The real gateway in a temporary enclave: `enclave up`, a grant big enough, a key, serve.
    With `gateways` > 1, that many gateway processes on the one registry (`db_url`, else the
    temporary enclave's SQLite), client i sending to gateway i % gateways. `call` is generate
    (tokens counted: generated), or score or activations (tokens counted: the prompts')."""
    import httpx

    enclave = str(REPO / ".venv" / "bin" / "enclave")
    home = Path(tempfile.mkdtemp(prefix="enclave-bench-"))
    env = {**os.environ, "ENCLAVE_HOME": str(home), "ENCLAVE_MODEL_DIR": str(model_dir), "ENCLAVE_DEVICE": device,
           "ENCLAVE_GATEWAY_MAX_BATCH": str(clients), "ENCLAVE_GATEWAY_MAX_QUEUE": str(max(256, clients)),
           "OMP_NUM_THREADS": str(threads)}
    env.pop("ENCLAVE_DB_URL", None)
    if db_url:
        env["ENCLAVE_DB_URL"] = db_url

    def cli(*args: str) -> str:
        done = subprocess.run([enclave, *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"enclave {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    servers: list[subprocess.Popen] = []
    try:
        _share_demo_build(home)
        cli("up", "--no-serve")
        cli("grant", "set", "demo", "--tokens", "1000000000", "--tokens-per-day", "1000000000", "--rpm", "100000",
            "--max-tokens-per-request", "4096", "--logprob-calls-per-day", "100000000", "--tier", "internals",
            "--activation-bytes-per-day", "1T", "--as", "operator")
        key = cli("key", "issue", "scholar", "--project", "demo", "--as", "operator").split()[-1]
        # Gateways sharing a home share its sampling secret: made here, before any of them starts.
        _provision_sampling_secret(home / "gateway" / "sampling-secret")
        bases = []
        for i in range(gateways):
            port = free_port()
            server_log = home / f"gateway-{i}.log"
            with server_log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the server
                servers.append(subprocess.Popen(
                    [enclave, "serve", "gateway", "--host", "127.0.0.1", "--port", str(port)],
                    env=env, stdout=sink, stderr=subprocess.STDOUT))
            bases.append((f"http://127.0.0.1:{port}", servers[-1], server_log))
        for base, server, server_log in bases:
            _wait_ready(base, server, server_log)
            log(f"gateway up on {base}")
        tokens = 0

        async def run_all(requests: list[Request]) -> tuple[float, list[float]]:
            nonlocal tokens
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            https = [httpx.AsyncClient(base_url=base, timeout=3600, limits=limits,
                                       headers={"Authorization": f"token {key}"}) for base, _, _ in bases]
            turn = iter(range(10**9))
            try:
                async def send(request: Request) -> None:
                    nonlocal tokens
                    http = https[next(turn) % len(https)]  # round robin, as a load balancer would
                    if call != "generate":
                        path, body = ("/v1/score", {"text": request.prompt}) if call == "score" else \
                            ("/v1/activations", {"prompt": request.prompt, "hooks": hooks})
                        reply = await http.post(path, json=body)
                        if reply.status_code != 200:
                            raise RuntimeError(f"POST {path}: {reply.status_code} {reply.text[:300]}")
                        tokens += reply.json()["usage"]["prompt_tokens"]
                        return
                    reply = await http.post("/v1/generate", json={
                        "prompt": request.prompt, "max_new_tokens": request.max_new_tokens, "temperature": 0,
                        "seed": 0, "ignore_eos": True})
                    if reply.status_code != 200:
                        raise RuntimeError(f"POST /v1/generate: {reply.status_code} {reply.text[:300]}")
                    body = reply.json()
                    assert body["usage"]["completion_tokens"] == request.max_new_tokens, body["usage"]
                    tokens += request.max_new_tokens

                return await closed_loop(requests, clients, send)
            finally:
                for http in https:
                    await http.aclose()

        asyncio.run(run_all(workload[:clients * gateways]))  # warm-up, every gateway
        tokens = 0
        seconds, latencies = asyncio.run(run_all(workload))
        name = "gateway (HTTP, continuous batching)" if gateways == 1 else f"{gateways} gateways (HTTP, one registry)"
        if call != "generate":
            name = f"gateway (HTTP) /v1/{call}"
        return Result(name, tokens, seconds, latencies)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(home, ignore_errors=True)


def run_engine_calls(loaded: LoadedModel, workload: list[Request], clients: int, call: str,
                     hooks: list[str]) -> tuple[Result, int]:
    """The workload's prompts as score or activations calls on the engine, `clients` at a time;
    activations also encoded as the route sends them (float16 bytes in base64). Returns the result
    (tokens: prompt tokens) and the bytes of activations returned."""
    from enclave.gateway.routes import _encoded

    engine = Engine(loaded, max_batch=clients, max_queue=max(256, clients), kernel_settings=KERNELS)
    engine.start()
    tokens, returned = 0, 0
    bos = loaded.tokenizer.eos_token_id

    async def send(request: Request) -> None:
        nonlocal tokens, returned
        ids = [bos, *request.prompt_ids]  # as both routes run them: <|endoftext|> first
        if call == "score":
            assert len(await engine.score(ids)) == len(ids) - 1
        else:
            tensors = await engine.activations(ids, hooks, list(range(len(ids))))
            encoded, _ = await asyncio.to_thread(_encoded, tensors)
            returned += sum(t.numel() * 2 for t in tensors.values())
        tokens += len(ids)

    try:
        asyncio.run(closed_loop(workload[:clients], clients, send))  # warm-up
        tokens, returned = 0, 0
        seconds, latencies = asyncio.run(closed_loop(workload, clients, send))
    finally:
        engine.close()
    return Result(f"engine (in-process) {call}", tokens, seconds, latencies), returned


def activations_benchmark(args, loaded: LoadedModel, model_dir: Path, workload: list[Request], log) -> dict:
    """Activations against score over the same prompts: in the engine, then over HTTP if it can run."""
    n_layer = int(loaded.config.n_layer)
    hooks = args.hooks.split(",") if args.hooks else [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]
    # The prompts both endpoints take (score puts <|endoftext|> first too): within the context.
    context = loaded.model_info()["context_length"]
    prompts = [r for r in workload if len(r.prompt_ids) + 1 <= context]
    results, sizes = {}, {}
    for call in ("score", "activations"):
        results[f"engine_{call}"], sizes[call] = run_engine_calls(loaded, prompts, args.clients, call, hooks)
        log(f"engine {call}: {results[f'engine_{call}'].tokens_per_s:.1f} prompt tokens/s")
    if not args.in_process and gateway_available():
        for call in ("score", "activations"):
            results[f"gateway_http_{call}"] = run_http(model_dir, prompts, args.clients, args.device, args.threads,
                                                       log, db_url=args.db_url, call=call, hooks=hooks)
            log(f"gateway HTTP {call}: {results[f'gateway_http_{call}'].tokens_per_s:.1f} prompt tokens/s")
    ratios = {where: round(results[f"{where}_activations"].tokens_per_s / results[f"{where}_score"].tokens_per_s, 3)
              for where in ("engine", "gateway_http") if f"{where}_score" in results}
    return {"hooks": hooks, "requests": len(prompts), "activation_bytes": sizes["activations"],
            "activation_mb_per_s": round(sizes["activations"] / results["engine_activations"].seconds / 1e6, 1),
            "systems": {name: r.as_dict() for name, r in results.items()},
            "ratio_activations_vs_score": ratios,
            **({} if "gateway_http" in ratios else {"http_skipped": "--in-process" if args.in_process else
                                                     "no project venv with the `enclave` command (run make first)"})}


def _provision_sampling_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)


def _share_demo_build(home: Path) -> None:
    """`enclave up` also builds the demo model: point the temporary home at the build cached in the
    usual enclave home (made there once if missing), so no run trains it again."""
    from enclave.demo.model import build_demo
    from enclave.envsettings import enclave_home

    built = build_demo(enclave_home() / "demo", progress=False).root
    (home / "demo").symlink_to(built.resolve(), target_is_directory=True)


def _wait_ready(base: str, server: subprocess.Popen, server_log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the gateway exited: {server_log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/v1/model", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the gateway did not answer GET /v1/model in time")


# -- context: the memory-bandwidth bound ------------------------------------------------------------

def measured_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large on-device copy (bytes read plus bytes written)."""
    source = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(5):
        target.copy_(source)
    synchronize(device)
    return 2 * source.numel() * 5 / (time.perf_counter() - started)


def decode_bound(loaded: LoadedModel, clients: int) -> dict:
    """Each decode step reads every weight once, so a step cannot be faster than weights/bandwidth."""
    model = loaded.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = measured_bandwidth(loaded.device)
    step_s = weight_bytes / bandwidth
    return {"weight_bytes": weight_bytes, "bandwidth_gb_s": round(bandwidth / 1e9, 1),
            "min_step_ms": round(step_s * 1e3, 3), "max_tokens_per_s_at_full_batch": round(clients / step_s)}


# -- main -----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients, and the static batch size")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests in the workload (default 6 x clients: long enough that the drain at the end, "
                             "the last requests finishing in a shrinking batch, is a small part of the run)")
    parser.add_argument("--naive-requests", type=int, default=48,
                        help="how many of them the sequential naive server runs (its rate is per request)")
    parser.add_argument("--model", default="random-124m", help="random-124m, demo, or a GPT-2 model directory")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--in-process", action="store_true", help="drive the Engine directly; skip the HTTP gateway")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--gateways", type=int, default=1,
                        help="also run the HTTP workload through this many gateway processes sharing one registry "
                             "(clients round-robin) and report their aggregate throughput against one gateway")
    parser.add_argument("--activations", action="store_true",
                        help="instead: the prompts through /v1/activations against the same prompts through /v1/score")
    parser.add_argument("--hooks", default=None,
                        help="with --activations: comma-separated hook names (default: blocks.{i}.hook_resid_post, all i)")
    parser.add_argument("--db-url", default=None,
                        help="the registry the gateways share (an empty PostgreSQL database: postgresql://...); "
                             "default: the temporary enclave's SQLite file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))

    with tempfile.TemporaryDirectory(prefix="enclave-bench-model-") as scratch:
        model_dir = resolve_model(args.model, Path(scratch))
        loaded = load_model(model_dir, device=args.device)
        if loaded.device.type == "cuda":
            # cuDNN's attention builds a plan for each new shape, and Hugging Face's growing cache
            # makes one every step: off, so the baselines are not slowed by re-planning (our engine
            # keeps off it by itself).
            torch.backends.cuda.enable_cudnn_sdp(False)
        n_requests = args.requests or 6 * args.clients
        workload = make_workload(loaded.tokenizer, n_requests, loaded.model_info()["context_length"])
        info = loaded.model_info()
        log(f"model {args.model} ({info['parameters'] / 1e6:.1f}M parameters) on {loaded.device} ({loaded.dtype}), "
            f"{args.clients} clients, {n_requests} requests, "
            f"{sum(r.max_new_tokens for r in workload)} new tokens, {sum(len(r.prompt_ids) for r in workload)} prompt tokens")

        if args.activations:
            summary = {"model": args.model, "parameters": info["parameters"], "device": str(loaded.device),
                       "dtype": str(loaded.dtype).removeprefix("torch."), "threads": args.threads,
                       "clients": args.clients, **activations_benchmark(args, loaded, model_dir, workload, log)}
            if args.json:
                print(json.dumps(summary, indent=2))
                return
            print()
            print(f"hooks: {', '.join(summary['hooks'])}; {summary['requests']} prompts, {args.clients} clients")
            print(f"{'system':44} {'prompt tok/s':>12} {'p50 s':>7} {'p95 s':>7}")
            for name, r in summary["systems"].items():
                print(f"{name:44} {r['tokens_per_s']:12.1f} {r['p50_latency_s']:7.3f} {r['p95_latency_s']:7.3f}")
            for where, ratio in summary["ratio_activations_vs_score"].items():
                print(f"activations / score throughput ({where}): {ratio:.2f}x")
            print(f"activations returned: {summary['activation_bytes'] / 1e6:.1f} MB "
                  f"({summary['activation_mb_per_s']} MB/s in the engine)")
            if "http_skipped" in summary:
                print(f"HTTP gateway skipped: {summary['http_skipped']}")
            return
        results = {}
        results["naive"] = run_naive(loaded, workload, args.clients, min(args.naive_requests, n_requests))
        log(f"naive: {results['naive'].tokens_per_s:.1f} tokens/s")
        results["static_batch"] = run_static(loaded, workload, args.clients)
        log(f"static batch: {results['static_batch'].tokens_per_s:.1f} tokens/s")
        results["engine_in_process"] = run_engine(loaded, workload, args.clients)
        log(f"engine in-process: {results['engine_in_process'].tokens_per_s:.1f} tokens/s")
        bound = decode_bound(loaded, args.clients)
        device, dtype = loaded.device, loaded.dtype
        http_skipped = "--in-process" if args.in_process else None
        if not args.in_process:
            if gateway_available():
                del loaded  # the gateway process loads its own copy
                results["gateway_http"] = run_http(model_dir, workload, args.clients, args.device, args.threads, log,
                                                   db_url=args.db_url)
                log(f"gateway HTTP: {results['gateway_http'].tokens_per_s:.1f} tokens/s")
                if args.gateways > 1:
                    several = run_http(model_dir, workload, args.clients, args.device, args.threads, log,
                                       gateways=args.gateways, db_url=args.db_url)
                    results[f"gateways_http_{args.gateways}"] = several
                    log(f"{args.gateways} gateways HTTP: {several.tokens_per_s:.1f} tokens/s "
                        f"({several.tokens_per_s / results['gateway_http'].tokens_per_s:.2f}x one gateway)")
            else:
                http_skipped = "no project venv with the `enclave` command (run make first)"

    ours = results.get("gateway_http") or results["engine_in_process"]
    for result in results.values():
        result.ratio_vs_naive = result.tokens_per_s / results["naive"].tokens_per_s
        result.ratio_vs_static = result.tokens_per_s / results["static_batch"].tokens_per_s
    summary = {
        "model": args.model, "parameters": info["parameters"], "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else _cpu_name(),
        "dtype": str(dtype).removeprefix("torch."), "threads": args.threads, "clients": args.clients,
        "requests": n_requests,
        "systems": {name: {**r.as_dict(), "ratio_vs_naive": round(r.ratio_vs_naive, 2),
                           "ratio_vs_static_batch": round(r.ratio_vs_static, 2)} for name, r in results.items()},
        "headline": "gateway_http" if "gateway_http" in results else "engine_in_process",
        "ratio_vs_naive": round(ours.ratio_vs_naive, 2),
        "ratio_vs_static_batch": round(ours.ratio_vs_static, 2),
        "decode_bound": bound,
        # Whether the forward ran our compiled CPU kernels (src/enclave/gateway/cpu_kernels.py) or,
        # without a compiler, PyTorch's: the numbers differ by about a third.
        **({"cpu_kernels": cpu_kernels.load(KERNELS) is not None} if device.type == "cpu" else {}),
        **({"http_skipped": http_skipped} if http_skipped else {}),
        **({"gateways": args.gateways, "ratio_gateways_vs_one": round(
            results[f"gateways_http_{args.gateways}"].tokens_per_s / results["gateway_http"].tokens_per_s, 2)}
           if f"gateways_http_{args.gateways}" in results else {}),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print()
    print(f"{'system':44} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} {'vs naive':>9} {'vs static':>9}")
    for result in results.values():
        print(f"{result.system:44} {result.tokens_per_s:9.1f} {result.percentile(0.5):7.2f} "
              f"{result.percentile(0.95):7.2f} {result.ratio_vs_naive:8.2f}x {result.ratio_vs_static:8.2f}x"
              + (f"  ({result.note})" if result.note else ""))
    if http_skipped:
        print(f"HTTP gateway skipped: {http_skipped}")
    if "ratio_gateways_vs_one" in summary:
        print(f"{args.gateways} gateways on one registry ({'PostgreSQL' if args.db_url else 'SQLite'}): "
              f"{summary['ratio_gateways_vs_one']:.2f}x the throughput of one")
    if "cpu_kernels" in summary:
        print("CPU kernels: " + ("ours (compiled)" if summary["cpu_kernels"] else "PyTorch's (ours could not be built)"))
    print(f"decode bound on {summary['device_name']}: {bound['weight_bytes'] / 1e6:.0f} MB of weights per step / "
          f"{bound['bandwidth_gb_s']} GB/s = {bound['min_step_ms']} ms per step, "
          f"so at most {bound['max_tokens_per_s_at_full_batch']} tokens/s at batch {args.clients}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    main()
