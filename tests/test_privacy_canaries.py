"""The canary audit (The Secret Sharer): the exposure estimators on known rankings, and on real
fine-tunes of the demo GPT-2 — a non-private fine-tune memorises the canaries it saw 16 times
(exposure near the maximum), a DP fine-tune at epsilon 8 does not (exposure near chance)."""

from __future__ import annotations

import math
import random
import re

import pytest

from enclave.privacy import canaries, finetune
from tests.demo_fixture import demo_dir  # noqa: F401  (fixture)


def test_canaries_are_random_ssn_shaped_secrets_repeated_1_4_16_times():
    planted = canaries.plant(random.Random(1), per_repeat=3)
    assert [c.repeats for c in planted] == [1] * 3 + [4] * 3 + [16] * 3
    assert len({c.secret for c in planted}) == 9
    assert all(re.fullmatch(r"my ssn is \d{3}-\d{2}-\d{4}", c.text) for c in planted)
    texts = canaries.planted_texts(planted)
    assert len(texts) == 3 * (1 + 4 + 16) and texts.count(planted[-1].text) == 16
    reference = canaries.reference_secrets(random.Random(2), 500, {c.secret for c in planted})
    assert len(set(reference)) == 500 and not set(reference) & {c.secret for c in planted}


def test_exposure_estimates_on_known_ranks():
    rng = random.Random(3)
    reference = [rng.gauss(60.0, 3.0) for _ in range(1024)]
    planted = [canaries.Canary("111-11-1111", 16), canaries.Canary("222-22-2222", 1)]
    # The first is likelier than every candidate (lower log-perplexity); the second is at the median.
    report = canaries.exposure_report(planted, [20.0, sorted(reference)[511]], reference)
    best, median = report["canaries"]
    assert best["rank"] == 1 and best["exposure_rank"] == pytest.approx(10.0)  # log2(1024) - log2(1)
    assert best["exposure_skewnorm"] > 25  # extrapolated far past what 1024 candidates can show
    assert median["rank"] == 513 and median["exposure_rank"] == pytest.approx(math.log2(1024 / 513), abs=1e-3)
    assert 0.5 < median["exposure_skewnorm"] < 1.6
    assert [row["repeats"] for row in report["table"]] == [1, 16]
    assert report["max_rank_exposure_bits"] == 10.0 and report["max_exposure_bits"] == pytest.approx(29.897, abs=1e-3)


def _fine_tune(demo, tmp_path, epsilon):
    records = finetune.dataset_records(demo.people_csv, max_records=60)
    params = finetune.FinetuneParams(epsilon=epsilon, delta=1e-3, epochs=3, batch_size=16, learning_rate=3e-3,
                                     max_length=32, canaries_per_repeat=2, canary_candidates=300, holdout=0.1,
                                     device="cpu", seed=7, noise_seed=7)
    return finetune.run(demo.model_dir, records, params, tmp_path / f"model-{epsilon}")


@pytest.mark.timeout(1800)  # the demo model's first build on a fresh machine
def test_non_private_fine_tune_exposes_canaries_and_dp_does_not(demo_dir, tmp_path):  # noqa: F811
    exposed = _fine_tune(demo_dir, tmp_path, None)
    private = _fine_tune(demo_dir, tmp_path, 8.0)
    assert private.epsilon_spent <= 8.0 + 1e-6 and private.noise_multiplier > 0
    top = math.log2(300)

    def row(result, repeats):
        return next(r for r in result.exposure["table"] if r["repeats"] == repeats)

    # Without DP the canaries seen 16 times are the model's likeliest secrets: at (or within a
    # bit of) the top of 300 candidates, and many bits further by the skew-normal estimate.
    assert row(exposed, 16)["exposure_rank_mean"] >= top - 1
    assert row(exposed, 16)["exposure_skewnorm_mean"] >= 15
    # With DP at epsilon 8 they rank like random secrets: a few bits at most.
    for repeats in (1, 4, 16):
        assert row(private, repeats)["exposure_rank_mean"] < 5, private.exposure["table"]
        assert row(private, repeats)["exposure_skewnorm_mean"] < 8, private.exposure["table"]
    assert row(exposed, 16)["exposure_skewnorm_mean"] > row(private, 16)["exposure_skewnorm_mean"] + 10
