"""Membership inference against a fine-tuned GPT-2, with sacroml (the SACRO project's tool for the
disclosure control of trained models).

sacroml's attacks are written for classifiers: they take the target model's predicted class
probabilities on its training rows ("members") and on held-out rows ("non-members"). Of them,
`WorstCaseAttack` fits GPT-2 honestly, because it needs only those two arrays (`Target(proba_train,
proba_test)`), not the model: it trains an attack classifier (a random forest, sacroml's default)
to tell members from non-members by the target's confidences, over repeated splits, and reports
AUC, advantage, TPR at low FPR and their p-values against a dummy attack on random data.

A language model's "prediction" for a record is a distribution over the next token at each
position. We give sacroml, for each record, the probabilities the model assigned to the record's
own tokens (the "true class" confidence at every position), sorted from most to least confident
and cut to the shortest record's length, so every row has the same width. This is the sequence
version of sacroml's confidence vector; it is what a loss-based attacker sees (Yeom et al. 2018).
sacroml's LiRA attack is not used: it retrains shadow copies of the target model through its
`clone()`/`fit()` interface, which a GPT-2 fine-tune does not have and which would cost a
fine-tune per shadow model.

Alongside, the plain loss-threshold attack (member if the record's mean loss is low) is scored
with sacroml's own metric function (`sacroml.metrics.get_metrics`), so both numbers come from one
well-kept implementation.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from typing import Any

from enclave.privacy.canaries import token_logprobs

MAX_FEATURES = 32
_KEEP = ("AUC", "P_HIGHER_AUC", "Advantage", "ACC", "TPR@0.1%", "TPR@0.01%", "TPR@0.001%")


def token_probabilities(model, tokenizer, texts: Sequence[str], *, device: str = "cpu", max_length: int = 128,
                        batch_size: int = 64) -> list[list[float]]:
    """For each text, the probability the model gives each of its tokens (after an end-of-text)."""
    return [[math.exp(lp) for lp in row]
            for row in token_logprobs(model, tokenizer, texts, device=device, batch_size=batch_size,
                                      max_length=max_length)]


def _sacroml():
    """sacroml's pieces, imported without letting its modules' `logging.basicConfig(level=INFO)`
    reconfigure the logging of the process that imports them (the CLI, the privacy service)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from sacroml import metrics
        from sacroml.attacks.target import Target
        from sacroml.attacks.worst_case_attack import WorstCaseAttack
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    return metrics, Target, WorstCaseAttack


def _features(probabilities: list[list[float]], width: int):
    import numpy as np

    return np.asarray([sorted(p, reverse=True)[:width] for p in probabilities], dtype=float)


def _summary(metrics: dict) -> dict[str, float]:
    return {k: round(float(metrics[k]), 6) for k in _KEEP if k in metrics}


def attack(model, tokenizer, members: Sequence[str], non_members: Sequence[str], *, device: str = "cpu",
           seed: int = 0, n_reps: int = 5, max_length: int = 128) -> dict[str, Any]:
    """sacroml's worst-case attack and the loss-threshold attack on `members` (training records)
    against `non_members` (records of the same dataset held out of training), each cut to
    `max_length` tokens as training cut it (the fine-tune's own `max_length`): the tokens past it
    were never trained on, and would only dilute the attack."""
    import numpy as np

    metrics, Target, WorstCaseAttack = _sacroml()

    if len(members) < 10 or len(non_members) < 10:
        return {"skipped": f"too few records for an attack ({len(members)} members, {len(non_members)} held out)"}
    member_p = token_probabilities(model, tokenizer, members, device=device, max_length=max_length)
    other_p = token_probabilities(model, tokenizer, non_members, device=device, max_length=max_length)
    width = min(MAX_FEATURES, min(map(len, member_p + other_p)))

    # The loss-threshold attack: score = the geometric-mean token probability = exp(-mean loss).
    def score(ps: list[float]) -> float:
        return math.exp(sum(math.log(max(p, 1e-30)) for p in ps) / len(ps))

    scores = np.asarray([score(p) for p in member_p] + [score(p) for p in other_p])
    labels = np.asarray([1] * len(member_p) + [0] * len(other_p))
    threshold = metrics.get_metrics(np.stack([1 - scores, scores], axis=1), labels.copy())

    # sacroml logs every repetition at INFO through the root logger's basicConfig; keep ours quiet.
    quiet = [logging.getLogger(n) for n in ("sacroml", "sacroml.attacks.worst_case_attack", "sacroml.attacks.attack")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="enclave-mia-") as scratch:
            worst = WorstCaseAttack(output_dir=scratch, write_report=False, n_reps=n_reps, reproduce_split=seed + 5,
                                    n_dummy_reps=1, sort_probs=True)
            target = Target(proba_train=_features(member_p, width), proba_test=_features(other_p, width))
            output = worst.attack(target)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    instances = output["attack_experiment_logger"]["attack_instance_logger"]
    reps = [_summary(m) for m in instances.values()]
    global_metrics = output["metadata"].get("global_metrics", {})
    return {
        "tool": "sacroml", "sacroml_version": output["metadata"].get("sacroml_version"),
        "members": len(member_p), "non_members": len(other_p), "features": width,
        "feature": "per-token probability of the record's own tokens, sorted, first "
                   f"{width} (the sequence analogue of a classifier's confidences)",
        "worst_case": {"attack": "WorstCaseAttack (random forest on the target's confidences)",
                       "reps": n_reps, "auc_mean": round(float(np.mean([r["AUC"] for r in reps])), 4),
                       "advantage_mean": round(float(np.mean([r["Advantage"] for r in reps])), 4),
                       "global": {k: (v if isinstance(v, (str, int)) else float(v)) for k, v in global_metrics.items()},
                       "repetitions": reps},
        "loss_threshold": {"attack": "member if exp(-mean token loss) is high (Yeom et al. 2018)",
                           "metrics": _summary(threshold),
                           "member_mean_loss": round(float(-np.log(scores[labels == 1]).mean()), 4),
                           "non_member_mean_loss": round(float(-np.log(scores[labels == 0]).mean()), 4)},
        "lira": "not run: sacroml's LiRA retrains shadow models through the target's clone()/fit(), "
                "which a GPT-2 fine-tune does not offer (one full fine-tune per shadow model)",
    }
