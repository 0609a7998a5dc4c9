"""Differentially private statistics of the project's registered datasets, over HTTP.

    from enclave.client import dp
    dp.count("patients", epsilon=0.1, where={"region": "north"})
    dp.mean("patients", "age", epsilon=0.5, bounds=(0, 110))
    dp.histogram("patients", "age", epsilon=0.5, bounds=(0, 110), bins=11)
    dp.quantile("patients", "age", 0.5, epsilon=0.5, bounds=(0, 110))
    dp.budget()                                    # the project's epsilon and delta: budget, spent, left

The privacy service computes each statistic on the registered dataset (diffprivlib) and charges
`epsilon` (and `delta`) to the project's budget. Each call returns {"value", "receipt", "budget"}:
save the receipt next to the value (`save_receipt`) and export both; the output review recognises
the receipt and applies its rules for DP results. Bounds are chosen by you without looking at the
data, and are required: bounds computed from the data would leak it. `where` filters rows:
{"column": value} for equality, or {"column": {"lt": 5, "ge": 1, "in": [...]}}.

Configuration: JUPYTERHUB_API_TOKEN, ENCLAVE_PRIVACY_URL (and ENCLAVE_PROJECT), which the hub
gives every notebook.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from enclave.client._http import Config, call


def _call(method: str, path: str, config: Config | None, **kwargs: Any) -> Any:
    return call(config, "privacy", method, path, **kwargs)


def _query(statistic: str, dataset: str, column: str | None, *, epsilon: float, delta: float = 0.0,
           bounds: Sequence[float] | None = None, where: dict | None = None, config: Config | None = None,
           **extra: Any) -> dict:
    body: dict[str, Any] = {"dataset": dataset, "epsilon": epsilon}
    if column is not None:
        body["column"] = column
    if delta:
        body["delta"] = delta
    if bounds is not None:
        body["bounds"] = list(bounds)
    if where:
        body["where"] = where
    body.update({k: v for k, v in extra.items() if v is not None})
    return _call("POST", f"/api/dp/{statistic}", config, json=body)


def count(dataset: str, column: str | None = None, *, epsilon: float, delta: float = 0.0, where: dict | None = None,
          config: Config | None = None) -> dict:
    """Rows (with a value in `column`, if given) matching `where`. With delta > 0, the analytic
    Gaussian mechanism; else a pure epsilon-DP count."""
    return _query("count", dataset, column, epsilon=epsilon, delta=delta, where=where, config=config)


def sum(dataset: str, column: str, *, epsilon: float, bounds: Sequence[float], where: dict | None = None,
        config: Config | None = None) -> dict:  # noqa: A001 - the statistic's name
    return _query("sum", dataset, column, epsilon=epsilon, bounds=bounds, where=where, config=config)


def mean(dataset: str, column: str, *, epsilon: float, bounds: Sequence[float], where: dict | None = None,
         config: Config | None = None) -> dict:
    return _query("mean", dataset, column, epsilon=epsilon, bounds=bounds, where=where, config=config)


def var(dataset: str, column: str, *, epsilon: float, bounds: Sequence[float], where: dict | None = None,
        config: Config | None = None) -> dict:
    return _query("var", dataset, column, epsilon=epsilon, bounds=bounds, where=where, config=config)


def histogram(dataset: str, column: str, *, epsilon: float, bounds: Sequence[float], bins: int = 10,
              where: dict | None = None, config: Config | None = None) -> dict:
    """{"value": {"counts": [...], "edges": [...]}, ...}: `bins` equal bins over `bounds`."""
    return _query("histogram", dataset, column, epsilon=epsilon, bounds=bounds, where=where, config=config, bins=bins)


def quantile(dataset: str, column: str, quantile: float = 0.5, *, epsilon: float, bounds: Sequence[float],
             where: dict | None = None, config: Config | None = None) -> dict:
    return _query("quantile", dataset, column, epsilon=epsilon, bounds=bounds, where=where, config=config,
                  quantile=quantile)


def budget(config: Config | None = None) -> dict:
    """The project's privacy budget, what it has spent and what is left, with every spend."""
    return _call("GET", "/api/budget", config)


def save_receipt(result: dict, path: str | os.PathLike) -> Path:
    """Write a result's signed receipt as JSON (export it with the value it covers)."""
    target = Path(path)
    target.write_text(json.dumps(result["receipt"], indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target
