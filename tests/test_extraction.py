"""Model stealing from the attacker's side (Carlini et al. 2024, "Stealing part of a production
language model"): stack what the API returns for many prompts, take an SVD, and read the hidden
size off the drop in singular values. Against raw logits the attack must succeed — so this test
can fail — and against the gateway it must not.

Probability oracles: with a caller-chosen seed and inverse-CDF sampling in token order, one
`generate` with `max_new_tokens=1` answers "is CDF(t) > u" for a u the caller can compute, so
bisecting over seeds recovers probabilities far beyond the top 5. Against the old scheme (the
engine's own `sample` with a generator seeded by the caller's seed) the attack must succeed, and
against the gateway (draws keyed by a server secret) it must not. Single-token scores return only
rounded numbers and count against the cap on probability-bearing calls."""

from __future__ import annotations

import base64
import math
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from enclave.gateway.engine import SamplingParams, sample
from enclave.registry import people
from enclave.registry.db import make_engine, session_scope, upgrade

from tests.gateway_fixtures import OPERATOR, build_tiny_model, serve

HIDDEN = 64
PROMPTS = 2000
# The attack needs only some logit coordinates (any set larger than h); 4,096 keep it quick.
COLUMNS = 4096
# GPT-2's final LayerNorm centres the hidden state, so logits span h or h-1 dimensions (h-1 when
# its bias is zero, as in a freshly initialised model); either reveals the hidden size.
REVEALED = {HIDDEN - 1, HIDDEN}


def singular_values(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    gram = rows @ rows.T  # m x m: the singular values of `rows` are the square roots of its eigenvalues
    singular = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))
    return singular[singular > singular[0] * 1e-12]


def estimate_hidden_size(rows: np.ndarray) -> tuple[int, float]:
    """The attack's read-out: where consecutive singular values drop the most, and by how much.
    Logits of a model with hidden size h have rank <= h, so raw logits drop sharply at h."""
    singular = singular_values(rows)
    ratios = singular[:-1] / singular[1:]
    best = int(np.argmax(ratios))
    return best + 1, float(ratios[best])


@pytest.fixture
def db(tmp_path):
    """A migrated SQLite registry with one operator (these attacks need no second database)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("victim"), n_embd=HIDDEN, n_positions=128, seed=3)
    from transformers import GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    rng = random.Random(42)
    prompts = [tokenizer.decode([rng.randrange(50000) for _ in range(rng.randint(6, 24))]) for _ in range(PROMPTS)]
    model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).eval()
    return folder, tokenizer, model, prompts


def test_the_attack_recovers_the_hidden_size_from_raw_logits(victim):
    _, tokenizer, model, prompts = victim
    columns = torch.tensor(sorted(random.Random(1).sample(range(len(tokenizer)), COLUMNS)))
    by_length: dict[int, list[list[int]]] = {}
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        by_length.setdefault(len(ids), []).append(ids)
    rows = []
    with torch.inference_mode():
        for batch in by_length.values():  # same-length prompts share one forward pass
            hidden = model.transformer(torch.tensor(batch)).last_hidden_state[:, -1]
            # Exactly the logits the model would return, for the chosen vocabulary columns.
            rows.append((hidden @ model.lm_head.weight[columns].T).double().numpy())
    estimate, drop = estimate_hidden_size(np.concatenate(rows))
    assert estimate in REVEALED
    assert drop > 1e3


def test_the_attack_fails_against_the_gateway(victim, db):
    folder, _, _, prompts = victim
    # A generous grant: the attacker gets every call they ask for and still learns nothing.
    with serve(db, folder, grant={"logprob_calls_per_day": 10 * PROMPTS}, max_batch=16) as gw:

        def ask(prompt: str) -> dict[int, float]:
            with gw.client() as c:
                reply = c.post("/v1/next-token", json={"prompt": prompt, "top_k": 5})
            assert reply.status_code == 200, reply.text
            return {gw.engine.tokenizer.convert_tokens_to_ids(gw.engine.tokenizer.tokenize(e["token"]))[0]: e["probability"]
                    for e in reply.json()["top"]}

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, prompts))
    assert len(answers) == PROMPTS and all(len(a) <= 5 for a in answers)
    # The attacker's best matrix: log-probabilities where the API answered, relative to a floor
    # just below the smallest probability each row revealed (so unrevealed tokens are 0).
    columns = sorted({token for answer in answers for token in answer})
    index = {token: i for i, token in enumerate(columns)}
    rows = np.zeros((PROMPTS, len(columns)))
    for r, answer in enumerate(answers):
        # A probability that rounds to 0 says only "below the rounding": the attacker skips it.
        revealed = {token: probability for token, probability in answer.items() if probability > 0}
        floor = np.log(min(revealed.values())) - 1.0
        for token, probability in revealed.items():
            rows[r, index[token]] = np.log(probability) - floor
    estimate, drop = estimate_hidden_size(rows)
    singular = singular_values(rows)
    around_h = [singular[i - 1] / singular[i] for i in sorted(REVEALED) if i < len(singular)]
    assert estimate not in REVEALED, (estimate, drop)
    assert max(around_h) < 2, around_h  # no trace of a rank boundary at the hidden size


def test_probability_calls_run_out_long_before_full_vectors(victim, db):
    """Rebuilding one full log-probability vector through /v1/score takes one call per vocabulary
    entry (50,257); the per-grant cap on probability-bearing calls stops it thousands of times
    earlier."""
    folder, _, _, _ = victim
    with serve(db, folder, grant={"logprob_calls_per_day": 20}) as gw, gw.client() as c:
        statuses = [c.post("/v1/score", json={"text": f"The answer is{tok}"}).status_code
                    for tok in [" a", " b", " c", " d", " e"] * 5]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {402}


# -- probability oracles: seeded sampling and single-token scores ----------------------------------

ORACLE_PROMPT = "The answer is"
SEED_POOL = 2**18  # seeds whose first uniform draw the attacker precomputes (about 4e-6 apart)
AGREEMENT_SEEDS = 200


def first_uniform(seed: int) -> float:
    """The number the old engine drew for a sequence seeded with `seed`: the attacker computes it."""
    return torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()


@pytest.fixture(scope="module")
def oracle_victim(tmp_path_factory):
    """A tiny model whose next-token distribution has a long tail of small probabilities, the
    true distribution for the oracle prompt (the attack's yardstick, not known to the attacker),
    and which token ids each single-token text can be."""
    folder = build_tiny_model(tmp_path_factory.mktemp("oracle-victim"), n_embd=HIDDEN, n_positions=128, seed=3,
                              sharpen=8)
    from transformers import GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([tokenizer.encode(ORACLE_PROMPT)])).logits[0, -1].float()
    ids_of_text: dict[str, list[int]] = {}
    for token_id in range(len(tokenizer)):
        ids_of_text.setdefault(tokenizer.decode([token_id]), []).append(token_id)
    return folder, logits, torch.softmax(logits.double(), dim=-1).numpy(), ids_of_text


@pytest.fixture(scope="module")
def seed_pool() -> tuple[np.ndarray, np.ndarray]:
    """The attacker's table: seeds sorted by their first uniform draw under the old scheme."""
    uniforms = np.array([first_uniform(seed) for seed in range(SEED_POOL)])
    order = np.argsort(uniforms)
    return order, uniforms[order]


def bisect_cdf(draw, token: int, pool) -> float:
    """The attacker's estimate of CDF(token) = P(id <= token): the smallest precomputed u whose
    seed draws a later token, found by bisection over the pool (one call per step)."""
    seeds, uniforms = pool
    low, high = 0, len(seeds)  # seeds below `low` drew <= token, seeds from `high` on drew > token
    while low < high:
        middle = (low + high) // 2
        if draw(int(seeds[middle])) > token:
            high = middle
        else:
            low = middle + 1
    below = uniforms[low - 1] if low > 0 else 0.0
    above = uniforms[low] if low < len(uniforms) else 1.0
    return (below + above) / 2


def seed_bisection_attack(draw, token: int, pool) -> float:
    """P(token) = CDF(token) - CDF(token - 1), each by bisection over seeds: about 36 calls."""
    return bisect_cdf(draw, token, pool) - bisect_cdf(draw, token - 1, pool)


def seed_agreement(draw, boundary: int, cdf_at_boundary: float) -> float:
    """How often the attacker predicts "the draw is after `boundary`" right from the seed alone
    (given the true CDF there, the most an attacker could know): 1.0 against the old scheme, about
    0.5 (chance) when the draws cannot be predicted."""
    seeds = random.Random(7).sample(range(SEED_POOL), AGREEMENT_SEEDS)
    return sum((draw(seed) > boundary) == (first_uniform(seed) >= cdf_at_boundary) for seed in seeds) / len(seeds)


def oracle_targets(probs: np.ndarray) -> tuple[int, float, int, float]:
    """The token ranked 10th (far beyond the top 5 the API reveals) and its probability, and the
    token id where the CDF in id order is closest to 1/2 with the CDF there."""
    target = int(np.argsort(probs)[::-1][9])
    cdf = np.cumsum(probs)
    boundary = int(np.argmin(np.abs(cdf - 0.5)))
    return target, float(probs[target]), boundary, float(cdf[boundary])


def test_seed_bisection_recovers_probabilities_under_the_old_scheme(oracle_victim, seed_pool):
    """The control: the engine's own sampling with a generator seeded by the caller's seed (the
    gateway before sampling was keyed) answers the attacker's questions exactly."""
    _, logits, probs, _ = oracle_victim
    params = [SamplingParams(max_new_tokens=1, temperature=1.0)]

    def draw(seed: int) -> int:
        return sample(logits[None], params, [torch.Generator().manual_seed(seed)])[0]

    target, truth, boundary, cdf_at_boundary = oracle_targets(probs)
    assert truth < 0.005  # invisible in the API's top 5 at 3 decimals
    estimate = seed_bisection_attack(draw, target, seed_pool)
    assert abs(estimate - truth) < 2e-5 and abs(estimate - truth) / truth < 0.03, (estimate, truth)
    assert seed_agreement(draw, boundary, cdf_at_boundary) > 0.98


def test_seed_bisection_learns_nothing_from_the_gateway(oracle_victim, seed_pool, tmp_path, db):
    folder, _, probs, ids_of_text = oracle_victim
    target, truth, boundary, cdf_at_boundary = oracle_targets(probs)
    with serve(db, folder, sampling_secret_file=tmp_path / "sampling-secret") as gw, gw.client() as c:

        def draw(seed: int) -> int:
            reply = c.post("/v1/generate", json={"prompt": ORACLE_PROMPT, "max_new_tokens": 1, "temperature": 1.0,
                                                 "seed": seed, "ignore_eos": True})
            assert reply.status_code == 200, reply.text
            return min(ids_of_text[reply.json()["choices"][0]["text"]])

        assert [draw(seed) for seed in (11, 12, 13)] == [draw(seed) for seed in (11, 12, 13)]  # seeds still reproduce
        estimate = seed_bisection_attack(draw, target, seed_pool)
        agreement = seed_agreement(draw, boundary, cdf_at_boundary)
    assert abs(estimate - truth) / truth > 0.5, (estimate, truth)
    assert abs(agreement - 0.5) < 0.15, agreement


def _single_token_score(c) -> dict:
    reply = c.post("/v1/score", json={"text": " answer"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_single_token_scores_return_rounded_numbers_only(victim, db):
    """A one-token score is the cheapest probability oracle: every number in it is rounded to the
    same 3 decimals, and the perplexity is derived from the rounded total, so it carries no digit
    the total does not."""
    folder, _, _, _ = victim
    with serve(db, folder) as gw, gw.client() as c:
        scored = _single_token_score(c)
        top = c.post("/v1/next-token", json={"prompt": ORACLE_PROMPT, "top_k": 5}).json()["top"]
    [token] = scored["tokens"]
    assert token["logprob"] == round(token["logprob"], 3) == scored["total_logprob"]
    assert scored["perplexity"] == round(math.exp(-scored["total_logprob"]), 3)
    assert all(entry["probability"] == round(entry["probability"], 3) for entry in top)
    assert any(entry["probability"] == 0 for entry in top)  # this model's tail rounds away


def test_single_token_scores_count_against_the_probability_cap(victim, db):
    folder, _, _, _ = victim
    with serve(db, folder, grant={"logprob_calls_per_day": 3}) as gw, gw.client() as c:
        statuses = [c.post("/v1/score", json={"text": " answer"}).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 402, 402]


# A `generate` that can make only one token answers the seed-bisection oracle's question, so it
# counts as a probability-bearing call (`quota.probability_bearing`) and that attack is capped too.
def test_one_token_generations_count_against_the_probability_cap(victim, db):
    folder, _, _, _ = victim
    with serve(db, folder, grant={"logprob_calls_per_day": 3}) as gw, gw.client() as c:
        statuses = [c.post("/v1/generate", json={"prompt": ORACLE_PROMPT, "max_new_tokens": 1, "seed": seed}).status_code
                    for seed in range(5)]
        longer = c.post("/v1/generate", json={"prompt": ORACLE_PROMPT, "max_new_tokens": 4, "seed": 9}).status_code
        scored = c.post("/v1/score", json={"text": " answer"}).status_code
        # n one-token samples are n answers of the oracle, not a longer text.
        several = c.post("/v1/generate", json={"prompt": ORACLE_PROMPT, "max_new_tokens": 1, "n": 4}).status_code
    assert statuses == [200, 200, 200, 402, 402]
    assert several == 402
    assert longer == 200 and scored == 402  # the cap is shared with scores; longer texts are not capped by it


# -- weight recovery from activations (the internals tier) -----------------------------------------
#
# Reading activations on both sides of a linear map gives its input/output pairs, and least
# squares recovers the map once there are more independent pairs than inputs. The attacker reads
# blocks.0.mlp.hook_post (the 4d GELU outputs) and blocks.0.hook_mlp_out (their image under
# W_out plus the bias), as many positions as the grant lets them, and solves for W_out (4d x d).

PAIR_HOOKS = ["blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out"]
ATTACK_PAIRS = 1000  # what the attacker stops at when nothing stops them first
POSITIONS_PER_CALL = 100


def regression_attack(gw, prompts: list[str]) -> tuple[np.ndarray, int, dict]:
    """Collect (hook_post, hook_mlp_out) pairs until the byte budget or ATTACK_PAIRS stops the
    attacker, asking only for what still fits the day's budget (as /v1/usage reports it), then
    fit W_out by least squares with a bias. Returns (W_out estimate, pairs, the published bound)."""
    inputs, outputs = [], []
    with gw.client() as c:
        bound = c.get("/v1/usage").json()["extraction"]["mlp_regression"]
        for prompt in prompts:
            left = c.get("/v1/usage").json()["activation_bytes_today"]["remaining"]
            pair_bytes = bound["bytes_needed"] // bound["pairs_needed"]
            wanted = min(POSITIONS_PER_CALL, ATTACK_PAIRS - sum(len(x) for x in inputs), left // pair_bytes)
            if wanted <= 0:
                break
            reply = c.post("/v1/activations", json={"prompt": prompt, "hooks": PAIR_HOOKS,
                                                    "positions": list(range(-1, -wanted - 1, -1))})
            if reply.status_code == 400 and reply.json()["error"] in ("bad_request", "context_exceeded"):
                continue  # a prompt shorter or longer than planned: the next one
            if reply.status_code != 200:
                assert reply.status_code == 402, reply.text  # the budget, never anything else
                break
            arrays = {name: np.frombuffer(base64.b64decode(item["data"]), dtype="<f2").reshape(item["shape"])
                      for name, item in reply.json()["activations"].items()}
            inputs.append(arrays[PAIR_HOOKS[0]].astype(np.float64))
            outputs.append(arrays[PAIR_HOOKS[1]].astype(np.float64))
    x = np.concatenate(inputs) if inputs else np.zeros((0, 1))
    y = np.concatenate(outputs) if outputs else np.zeros((0, 1))
    design = np.hstack([x, np.ones((len(x), 1))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    return solution[:-1], len(x), bound


def _relative_error(estimate: np.ndarray, true: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - true) / np.linalg.norm(true))


@pytest.fixture(scope="module")
def long_prompts(victim):
    _, tokenizer, _, _ = victim
    rng = random.Random(7)
    return [tokenizer.decode([rng.randrange(50000) for _ in range(POSITIONS_PER_CALL)]) for _ in range(40)]


def _w_out(model) -> np.ndarray:
    return model.transformer.h[0].mlp.c_proj.weight.detach().numpy().astype(np.float64)  # [4d, d] (Conv1D)


def test_the_activation_budget_stops_the_regression_attack(victim, long_prompts, db):
    folder, _, model, _ = victim
    pair_bytes = (4 * HIDDEN + HIDDEN) * 2
    budget = 160 * pair_bytes  # a day's budget: 160 pairs, fewer than the 4d + 1 = 257 the regression needs
    with serve(db, folder, grant={"tier": "internals", "activation_bytes_per_day": budget,
                                  "tokens_per_day": 10**6, "tokens_total": 10**7}) as gw:
        estimate, pairs, bound = regression_attack(gw, long_prompts)
        with gw.client() as c:
            refused = c.post("/v1/activations", json={"prompt": long_prompts[0], "hooks": PAIR_HOOKS, "positions": [0]})
    # The published bound says so, and the gateway held to it: every byte spent, no pair more.
    assert (bound["pairs_needed"], bound["pairs_per_day"]) == (4 * HIDDEN + 1, 160)
    assert bound["days_per_matrix"] > 1
    assert pairs == 160 and refused.status_code == 402
    assert _relative_error(estimate, _w_out(model)) > 0.3


def test_without_the_budget_the_regression_attack_recovers_the_matrix(victim, long_prompts, db):
    """The control: the same attack with a budget too large to bite recovers W_out, so the test
    above fails for the budget's sake and not the attack's."""
    folder, _, model, _ = victim
    with serve(db, folder, grant={"tier": "internals", "activation_bytes_per_day": 64 * 1024**2,
                                  "tokens_per_day": 10**6, "tokens_total": 10**7}) as gw:
        estimate, pairs, bound = regression_attack(gw, long_prompts)
    assert pairs == ATTACK_PAIRS and bound["matrices_per_day"] > 1
    assert _relative_error(estimate, _w_out(model)) < 0.01
