"""Model stealing from the attacker's side (Carlini et al. 2024, "Stealing part of a production
language model"): stack what the API returns for many prompts, take an SVD, and read the hidden
size off the drop in singular values. Against raw logits the attack must succeed — so this test
can fail — and against the gateway it must not."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

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


def test_the_attack_fails_against_the_gateway(victim, tmp_path):
    folder, _, _, prompts = victim
    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
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
        floor = np.log(min(answer.values())) - 1.0
        for token, probability in answer.items():
            rows[r, index[token]] = np.log(probability) - floor
    estimate, drop = estimate_hidden_size(rows)
    singular = singular_values(rows)
    around_h = [singular[i - 1] / singular[i] for i in sorted(REVEALED) if i < len(singular)]
    assert estimate not in REVEALED, (estimate, drop)
    assert max(around_h) < 2, around_h  # no trace of a rank boundary at the hidden size


def test_probability_calls_run_out_long_before_full_vectors(tmp_path, victim):
    """Rebuilding one full log-probability vector through /v1/score takes one call per vocabulary
    entry (50,257); the per-grant cap on probability-bearing calls stops it thousands of times
    earlier."""
    folder, _, _, _ = victim
    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    with serve(db, folder, grant={"logprob_calls_per_day": 20}) as gw, gw.client() as c:
        statuses = [c.post("/v1/score", json={"text": f"The answer is{tok}"}).status_code
                    for tok in [" a", " b", " c", " d", " e"] * 5]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {402}
