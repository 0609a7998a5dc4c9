"""The gateway's model loading, batched GPT-2 forward and continuous-batching engine, on a tiny
random GPT-2 (2 layers, 64 dimensions) with the real tokenizer, so every test is quick."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

from enclave.gateway.engine import ContextTooLong, Engine, QueueFull, SamplingParams, derive_seed, sample
from enclave.gateway.gpt2 import GPT2Forward
from enclave.gateway.model import ModelLoadError, load_model

PROMPTS = ["The history of the enclave began", "Hello world", "A", "Researchers in Edinburgh found that the"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256)
    GPT2LMHeadModel(config).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir, device="cpu")


@pytest.fixture
def gateway_engine(loaded):
    engine = Engine(loaded, max_batch=8, max_queue=16)
    engine.start()
    yield engine
    engine.close()


def ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text)


def run(coroutine):
    return asyncio.run(coroutine)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


# -- loading --------------------------------------------------------------------------------------

def test_model_info_says_name_size_and_context_only(loaded, model_dir):
    info = loaded.model_info()
    assert info == {"name": model_dir.name, "parameters": sum(p.numel() for p in loaded.model.parameters()),
                    "context_length": 256}
    assert loaded.dtype == torch.float32 and not loaded.model.training


def test_load_errors_are_one_line(tmp_path, model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere", device="cpu")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a GPT-2"):
        load_model(tmp_path / "bert", device="cpu")
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelLoadError, match="no tokenizer") as error:
        load_model(bare, device="cpu")
    assert "\n" not in str(error.value)


# -- the forward pass -----------------------------------------------------------------------------

def hf_logits(loaded, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([token_ids])).logits[0]


@pytest.mark.parametrize("batch_invariant", [True, False], ids=["row-by-row", "masked"])
def test_forward_matches_hf_for_prefill_and_mixed_decode(loaded, batch_invariant):
    forward = GPT2Forward(loaded.model, max_slots=5, batch_invariant=batch_invariant)
    sequences = [ids(loaded, p) for p in PROMPTS[:3]]
    for slot, prompt in enumerate(sequences):
        torch.testing.assert_close(forward.prefill(slot, prompt), hf_logits(loaded, prompt)[-1], atol=1e-4, rtol=0)
    torch.manual_seed(1)
    for step in range(6):
        # Steps alternate between all three slots in order and a non-contiguous subset.
        slots = [0, 1, 2] if step % 2 == 0 else [2, 0]
        tokens = torch.randint(0, 50257, (len(slots),)).tolist()
        positions = [len(sequences[s]) for s in slots]
        for s, t in zip(slots, tokens):
            sequences[s].append(t)
        logits = forward.decode(slots, tokens, positions)
        for row, s in enumerate(slots):
            torch.testing.assert_close(logits[row], hf_logits(loaded, sequences[s])[-1], atol=1e-4, rtol=0)
    # Decode rows and two new prompts in one forward.
    new_prompts = [(3, ids(loaded, PROMPTS[3])), (4, [464])]
    positions = [len(s) for s in sequences]
    for s in sequences:
        s.append(318)
    logits = forward.forward([0, 1, 2], [318] * 3, positions, new_prompts)
    expected = [hf_logits(loaded, s)[-1] for s in sequences] + [hf_logits(loaded, p)[-1] for _, p in new_prompts]
    torch.testing.assert_close(logits, torch.stack(expected), atol=1e-4, rtol=0)


def test_forward_rows_do_not_depend_on_the_batch(loaded):
    forward = GPT2Forward(loaded.model, max_slots=6)
    prompts = [ids(loaded, p * 3) for p in PROMPTS]
    alone = [forward.prefill(slot, p) for slot, p in enumerate(prompts)]
    together = forward.forward([], [], [], list(enumerate(prompts)))
    assert all(torch.equal(a, t) for a, t in zip(alone, together))
    positions = [len(p) for p in prompts]
    single = forward.decode([1], [100], positions[1:2])[0]
    assert torch.equal(forward.decode([0, 1, 2, 3], [5, 100, 7, 8], positions)[1], single)
    assert torch.equal(forward.forward([1, 3], [100, 8], [positions[1], positions[3]], [(5, prompts[0])])[0], single)


def test_rows_past_the_invariant_range_are_split_without_changing_bits(loaded):
    # Two long prompts in one forward make more rows than one matrix product may take (INVARIANT_ROWS),
    # so every product is computed in slices written into one output: each prompt's logits and the
    # decode row beside them must still be bit-identical to computing them alone.
    from enclave.gateway.gpt2 import INVARIANT_ROWS

    forward = GPT2Forward(loaded.model, max_slots=4)
    first, second = ([464 + i % 50 for i in range(200)], [1000 + i % 70 for i in range(200)])
    assert len(first) + len(second) > INVARIANT_ROWS[1]
    alone = [forward.prefill(slot, p) for slot, p in ((0, first), (1, second))]
    decode_alone = forward.decode([0], [318], [len(first)])[0]
    together = forward.forward([0], [318], [len(first)], [(2, first), (1, second)])
    assert torch.equal(together[0], decode_alone)
    assert torch.equal(together[1], alone[0]) and torch.equal(together[2], alone[1])


def test_sequence_logits_match_hf(loaded):
    forward = GPT2Forward(loaded.model, max_slots=1)
    token_ids = ids(loaded, PROMPTS[3])
    torch.testing.assert_close(forward.sequence_logits(token_ids), hf_logits(loaded, token_ids), atol=1e-4, rtol=0)


# -- generation -----------------------------------------------------------------------------------

def test_greedy_equals_hf_generate(loaded, gateway_engine):
    for text in PROMPTS:
        prompt = ids(loaded, text)
        with torch.no_grad():
            expected = loaded.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24,
                                              pad_token_id=50256)[0, len(prompt):].tolist()
        [completion] = run(gateway_engine.generate(prompt, SamplingParams(max_new_tokens=24, temperature=0)))
        assert completion.token_ids == expected


SAMPLED = SamplingParams(max_new_tokens=40, temperature=0.9, top_k=50, top_p=0.95, seed=1234)
GREEDY = SamplingParams(max_new_tokens=40, temperature=0, seed=7)


def test_same_seed_same_tokens_whatever_else_is_in_the_batch(loaded, gateway_engine):
    prompt = ids(loaded, PROMPTS[0])
    alone = [run(gateway_engine.generate(prompt, params))[0].token_ids for params in (SAMPLED, GREEDY)]

    async def crowded():
        others = [gateway_engine.generate(ids(loaded, text * (i + 1)), SamplingParams(
            max_new_tokens=10 + 7 * i, temperature=0.5 + 0.2 * i, top_k=5 * i, seed=i)) for i, text in enumerate(PROMPTS)]
        tasks = [asyncio.ensure_future(o) for o in others[:2]]
        await asyncio.sleep(0.02)  # so ours join a batch that is already mid-decode
        mine = [asyncio.ensure_future(gateway_engine.generate(prompt, p)) for p in (SAMPLED, GREEDY)]
        tasks += [asyncio.ensure_future(o) for o in others[2:]]
        await asyncio.gather(*tasks)
        return [(await m)[0].token_ids for m in mine]

    assert run(crowded()) == alone
    assert alone[0] != alone[1]  # the sampled run really sampled


def test_n_samples_use_consecutive_seeds(loaded, gateway_engine):
    prompt = ids(loaded, PROMPTS[1])
    many = run(gateway_engine.generate(prompt, SamplingParams(max_new_tokens=12, seed=40), n=3))
    singles = [run(gateway_engine.generate(prompt, SamplingParams(max_new_tokens=12, seed=40 + i)))[0] for i in range(3)]
    assert [c.token_ids for c in many] == [c.token_ids for c in singles]
    assert len({tuple(c.token_ids) for c in many}) == 3


def _sampled_tokens(engine, prompt, project: str = "", seeds=range(8)) -> list[list[int]]:
    params = [SamplingParams(max_new_tokens=6, temperature=1.0, seed=seed) for seed in seeds]
    return [run(engine.generate(prompt, p, project=project))[0].token_ids for p in params]


def test_seeds_are_keyed_by_the_secret_the_project_and_the_prompt(loaded):
    """A caller's seed reproduces a text within a project, but what the generator draws depends on
    a secret the caller does not have, on the project and on the prompt."""
    prompt = ids(loaded, PROMPTS[0])
    secret, other_secret = b"k" * 32, b"j" * 32
    engine = Engine(loaded, max_batch=8, max_queue=16, sampling_secret=secret)
    engine.start()
    try:
        lab = _sampled_tokens(engine, prompt, "lab")
        assert _sampled_tokens(engine, prompt, "lab") == lab  # same seed, prompt and project: same text
        assert _sampled_tokens(engine, prompt, "other") != lab
        engine.use_sampling_secret(other_secret)
        assert _sampled_tokens(engine, prompt, "lab") != lab
        engine.use_sampling_secret(secret)
        assert _sampled_tokens(engine, prompt, "lab") == lab  # a kept secret keeps seeds reproducible
        # Sequence i of a request runs with the derived seed, never the caller's number.
        [completion] = run(engine.generate(prompt, SamplingParams(max_new_tokens=1, temperature=1.0, seed=5),
                                           project="lab"))
        keyed = torch.Generator().manual_seed(derive_seed(secret, "lab", 5, prompt))
        with torch.inference_mode():
            logits = loaded.model(torch.tensor([prompt])).logits[0, -1:]
        assert sample(logits, [SamplingParams(temperature=1.0)], [keyed]) == completion.token_ids
    finally:
        engine.close()


def test_derive_seed():
    seed = derive_seed(b"s" * 32, "lab", 7, [1, 2, 3])
    assert 0 <= seed < 2**63 and seed == derive_seed(b"s" * 32, "lab", 7, [1, 2, 3])
    assert len({seed, derive_seed(b"t" * 32, "lab", 7, [1, 2, 3]), derive_seed(b"s" * 32, "lab2", 7, [1, 2, 3]),
                derive_seed(b"s" * 32, "lab", 8, [1, 2, 3]), derive_seed(b"s" * 32, "lab", 7, [1, 2, 4]),
                derive_seed(b"s" * 32, "lab", 7, [12, 3])}) == 6  # every input matters, without ambiguity
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Engine.use_sampling_secret(object.__new__(Engine), b"short")


def test_length_and_stop_strings(loaded, gateway_engine):
    prompt = ids(loaded, PROMPTS[0])
    [full] = run(gateway_engine.generate(prompt, SamplingParams(max_new_tokens=30, temperature=0)))
    assert full.finish_reason == "length" and len(full.token_ids) == 30
    assert full.text == loaded.tokenizer.decode(full.token_ids)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    [cut] = run(gateway_engine.generate(prompt, SamplingParams(max_new_tokens=30, temperature=0, stop=[stop, "\x00"])))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.token_ids == full.token_ids[:len(cut.token_ids)] and len(cut.token_ids) < 30


def test_end_of_text_stops_unless_ignored(model_dir):
    # ln_f squashed to a bias along <|endoftext|>'s embedding: every position predicts end-of-text.
    loaded = load_model(model_dir, device="cpu")
    with torch.no_grad():
        loaded.model.transformer.ln_f.weight.zero_()
        loaded.model.transformer.ln_f.bias.copy_(loaded.model.transformer.wte.weight[50256] * 100)
    engine = Engine(loaded, max_batch=2)
    engine.start()
    try:
        prompt = ids(loaded, PROMPTS[1])
        [ended] = run(engine.generate(prompt, SamplingParams(max_new_tokens=5, temperature=0)))
        assert (ended.token_ids, ended.text, ended.finish_reason) == ([50256], "", "stop")
        [kept] = run(engine.generate(prompt, SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)))
        assert kept.token_ids == [50256] * 5 and kept.finish_reason == "length"
    finally:
        engine.close()


def test_cancelled_request_frees_its_slot(loaded, gateway_engine):
    prompt = ids(loaded, PROMPTS[0])

    async def scenario():
        task = asyncio.ensure_future(gateway_engine.generate(prompt, SamplingParams(max_new_tokens=200, ignore_eos=True)))
        await until(lambda: gateway_engine.stats()["running"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: gateway_engine.stats()["running"] == 0)
        return await gateway_engine.generate(prompt, SamplingParams(max_new_tokens=5))

    [after] = run(scenario())
    assert len(after.token_ids) == 5
    assert gateway_engine.stats() == {"running": 0, "waiting": 0, "slots": 8}


def test_full_queue_refuses_at_once(loaded):
    engine = Engine(loaded, max_batch=1, max_queue=2)
    engine.start()
    long = SamplingParams(max_new_tokens=200, ignore_eos=True)
    prompt = ids(loaded, PROMPTS[1])

    async def scenario():
        running = asyncio.ensure_future(engine.generate(prompt, long))
        await until(lambda: engine.stats()["running"] == 1)
        waiting = [asyncio.ensure_future(engine.generate(prompt, long)) for _ in range(2)]
        await until(lambda: engine.stats()["waiting"] == 2)
        with pytest.raises(QueueFull) as refused:
            await engine.generate(prompt, long)
        with pytest.raises(QueueFull):
            await engine.score(prompt)
        for task in (running, *waiting):
            task.cancel()
        await asyncio.gather(running, *waiting, return_exceptions=True)
        return refused.value.retry_after

    try:
        assert run(scenario()) >= 1
    finally:
        engine.close()


def test_context_too_long(loaded, gateway_engine):
    with pytest.raises(ContextTooLong):
        run(gateway_engine.generate([464] * 250, SamplingParams(max_new_tokens=7)))
    with pytest.raises(ContextTooLong):
        run(gateway_engine.score([464] * 257))


# -- scoring and next-token -----------------------------------------------------------------------

def test_score_is_log_softmax_of_hf_logits_at_the_next_tokens(loaded, gateway_engine):
    token_ids = [50256] + ids(loaded, PROMPTS[3])
    expected = torch.log_softmax(hf_logits(loaded, token_ids)[:-1].float(), dim=-1)
    expected = expected.gather(1, torch.tensor(token_ids[1:])[:, None])[:, 0]
    scores = run(gateway_engine.score(token_ids))
    assert len(scores) == len(token_ids) - 1
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-4, rtol=0)


def test_next_token_is_hf_top_k(loaded, gateway_engine):
    token_ids = ids(loaded, PROMPTS[0])
    probs = torch.softmax(hf_logits(loaded, token_ids)[-1], dim=-1)
    top = run(gateway_engine.next_token(token_ids, 5))
    assert [t for t, _ in top] == torch.topk(probs, 5).indices.tolist()
    torch.testing.assert_close(torch.tensor([p for _, p in top]), torch.topk(probs, 5).values, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        run(gateway_engine.next_token(token_ids, 6))


# -- sampling -------------------------------------------------------------------------------------

def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]] * 4)
    params = [SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=5.0, top_p=0.01),
              SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=2)]
    for seed in range(20):
        generators = [torch.Generator().manual_seed(seed) for _ in params]
        tokens = sample(logits, params, generators)
        assert tokens[:3] == [1, 1, 1] and tokens[3] in (1, 2)


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([sample(logits, [SamplingParams()], [generator])[0] for _ in range(3000)]),
                            minlength=3)
    torch.testing.assert_close(counts / 3000, torch.tensor([0.1, 0.6, 0.3]), atol=0.03, rtol=0)


# -- CUDA (skipped without a GPU) -----------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_forward_matches_hf(model_dir):
    loaded = load_model(model_dir, device="cuda", dtype=torch.float32)
    forward = GPT2Forward(loaded.model, max_slots=3)
    assert not forward.invariant
    prompts = [ids(loaded, p) for p in PROMPTS[:3]]
    logits = forward.forward([], [], [], list(enumerate(prompts)))
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            expected = loaded.model(torch.tensor([prompt], device="cuda")).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, atol=1e-3, rtol=0)
        logits = forward.decode([0, 1, 2], [11, 12, 13], [len(p) for p in prompts])
        for row, prompt in enumerate(prompts):
            expected = loaded.model(torch.tensor([prompt + [11 + row]], device="cuda")).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, atol=1e-3, rtol=0)


@cuda
def test_cuda_bf16_engine_generates(model_dir):
    loaded = load_model(model_dir, device="cuda")
    assert loaded.dtype == torch.bfloat16
    engine = Engine(loaded, max_batch=4)
    engine.start()
    try:
        async def many():
            return await asyncio.gather(*(engine.generate(ids(loaded, p), SamplingParams(max_new_tokens=9, seed=i), n=2)
                                          for i, p in enumerate(PROMPTS)))
        results = run(many())
        assert [len(c.token_ids) for r in results for c in r] == [9] * 8
        assert len(run(engine.score([50256] + ids(loaded, PROMPTS[0])))) == len(ids(loaded, PROMPTS[0]))
    finally:
        engine.close()
