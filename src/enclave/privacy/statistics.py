"""The DP statistics: parse a query, read the dataset's column, run diffprivlib.

diffprivlib does the privacy: its mechanisms, its clipping of values to the bounds and its checks
of epsilon and bounds. What is ours is the enclave's stricter rules around it:

- bounds are required wherever diffprivlib would otherwise compute them from the data (it only
  warns, with a `PrivacyLeakWarning`); here that warning, and any other of diffprivlib's leak
  warnings, is an error (BadInput) and nothing is charged;
- delta is 0 for every statistic except a count, which with delta > 0 uses diffprivlib's analytic
  Gaussian mechanism; delta must stay below 1/n (`enclave.registry.privacy.check_cost`);
- a filter (`where`) selects rows before the statistic (a fixed predicate per record, so the
  guarantee holds for the selected rows' neighbours too);
- the answer never fails because of what the data holds: an empty selection gives the mean and
  variance of one value at the bounds' midpoint rather than an error, because an error that only
  some datasets cause would itself tell the caller something, for free.

Cells that do not parse as numbers are missing values and are skipped by the numeric statistics.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from enclave.errors import BadInput, NotFound
from enclave.privacy.datafiles import read_registered

STATISTICS = ("count", "sum", "mean", "var", "histogram", "quantile")
NEEDS_BOUNDS = frozenset({"sum", "mean", "var", "histogram", "quantile"})
OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in")
MAX_WHERE = 16


@dataclasses.dataclass(frozen=True)
class Query:
    statistic: str
    dataset: str
    column: str | None
    epsilon: float
    delta: float
    bounds: tuple[float, float] | None
    where: dict[str, Any]
    bins: int | None = None
    quantile: float | None = None

    def as_json(self) -> dict[str, Any]:
        """What the ledger and the receipt record about the query."""
        out: dict[str, Any] = {"statistic": self.statistic, "dataset": self.dataset, "column": self.column,
                               "bounds": list(self.bounds) if self.bounds else None, "where": self.where}
        if self.bins is not None:
            out["bins"] = self.bins
        if self.quantile is not None:
            out["quantile"] = self.quantile
        return out


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{what} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise BadInput(f"{what} must be finite, not {value!r}")
    return float(value)


def parse_query(statistic: str, body: dict[str, Any], *, max_bins: int = 1000) -> Query:
    """A query from a request's JSON body; BadInput for anything malformed (nothing is charged).
    Epsilon and delta are checked against the dataset later (`check_cost`), once n is known."""
    if statistic not in STATISTICS:
        raise NotFound(f"unknown statistic {statistic!r}: choose from {', '.join(STATISTICS)}")
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    known = {"dataset", "column", "epsilon", "delta", "bounds", "where", "bins", "quantile"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(known))})")
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise BadInput("say which dataset: dataset=...")
    column = body.get("column")
    if column is not None and (not isinstance(column, str) or not column):
        raise BadInput("column must be a column name")
    if column is None and statistic != "count":
        raise BadInput(f"{statistic} needs a column")
    if "epsilon" not in body:
        raise BadInput("say what the query may spend: epsilon=...")
    epsilon = body["epsilon"]
    delta = body.get("delta", 0.0)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0 \
            or not math.isfinite(epsilon):
        raise BadInput(f"epsilon must be a positive number, not {epsilon!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta >= 0 or not math.isfinite(delta):
        raise BadInput(f"delta must be zero or a small positive number, not {delta!r}")
    if delta > 0 and statistic != "count":
        raise BadInput(f"{statistic} is pure epsilon-DP here: leave delta at 0 (only count takes a delta)")
    bounds = body.get("bounds")
    if statistic in NEEDS_BOUNDS:
        if bounds is None:
            raise BadInput(f"{statistic} needs bounds=(lower, upper) that you choose without looking at the data: "
                           "bounds computed from the data leak it")
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise BadInput("bounds must be a pair (lower, upper)")
        lower, upper = _number(bounds[0], "the lower bound"), _number(bounds[1], "the upper bound")
        if not lower < upper:
            raise BadInput(f"the lower bound must be below the upper bound, not {lower:g} and {upper:g}")
        bounds = (lower, upper)
    elif bounds is not None:
        raise BadInput(f"{statistic} takes no bounds")
    bins = quant = None
    if statistic == "histogram":
        bins = body.get("bins", 10)
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= max_bins:
            raise BadInput(f"bins must be a whole number from 1 to {max_bins}")
    elif body.get("bins") is not None:
        raise BadInput(f"{statistic} takes no bins")
    if statistic == "quantile":
        quant = _number(body.get("quantile", 0.5), "quantile")
        if not 0 <= quant <= 1:
            raise BadInput(f"quantile must be between 0 and 1, not {quant:g}")
    elif body.get("quantile") is not None:
        raise BadInput(f"{statistic} takes no quantile")
    return Query(statistic=statistic, dataset=dataset, column=column, epsilon=float(epsilon), delta=float(delta),
                 bounds=bounds, where=_parse_where(body.get("where")), bins=bins, quantile=quant)


def _parse_where(where: Any) -> dict[str, Any]:
    """{column: value} for equality, or {column: {"lt": 5, "ge": 1, "in": [...], ...}}."""
    if where is None:
        return {}
    if not isinstance(where, dict) or len(where) > MAX_WHERE:
        raise BadInput("where must be an object {column: value or {operator: value}} of at most "
                       f"{MAX_WHERE} columns")
    out: dict[str, Any] = {}
    for column, condition in where.items():
        if isinstance(condition, dict):
            if not condition or any(op not in OPERATORS for op in condition):
                raise BadInput(f"where[{column!r}]: operators are {', '.join(OPERATORS)}")
            for op, value in condition.items():
                values = value if op == "in" else [value]
                if op == "in" and not isinstance(value, list):
                    raise BadInput(f"where[{column!r}]: 'in' takes a list")
                if any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in values):
                    raise BadInput(f"where[{column!r}]: compare with numbers or text only")
            out[column] = dict(condition)
        elif isinstance(condition, (str, int, float)) and not isinstance(condition, bool):
            out[column] = {"eq": condition}
        else:
            raise BadInput(f"where[{column!r}]: compare with numbers or text only")
    return out


@dataclasses.dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


def read_table(path: str | Path, max_bytes: int, expected_sha256: str | None = None) -> Table:
    """A registered CSV/TSV dataset, whole (the statistics need every row). A file that is no
    longer the one registered (its SHA-256 changed) is refused: the receipt names the registered
    version."""
    path = Path(path)
    if path.suffix.lower() not in {".csv", ".tsv"} or not path.is_file():
        raise BadInput("DP statistics work on a registered CSV or TSV file; this dataset is not one")
    data = read_registered(path, max_bytes, expected_sha256)
    text = data.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    header = [c.strip() for c in next(reader, [])]
    return Table(header, [row for row in reader if row])


def _as_float(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _matches(cell: str, op: str, wanted: Any) -> bool:
    if op == "in":
        return any(_matches(cell, "eq", w) for w in wanted)
    if isinstance(wanted, str):
        left, right = cell.strip(), wanted
    else:
        left, right = _as_float(cell), float(wanted)
        if left is None:
            return op == "ne"
    if op == "eq":
        return left == right
    if op == "ne":
        return left != right
    if isinstance(left, str) != isinstance(right, str):
        return False
    return {"lt": left < right, "le": left <= right, "gt": left > right, "ge": left >= right}[op]


def select(table: Table, query: Query) -> tuple[int, np.ndarray]:
    """(n, values): the dataset's row count and the query's column over the rows its filter
    selects (for a count without a column: one per selected row). Unknown columns: NotFound."""
    index = {name: i for i, name in enumerate(table.columns)}
    for name in [query.column, *query.where] if query.column else list(query.where):
        if name not in index:
            raise NotFound(f"dataset {query.dataset!r} has no column {name!r} (columns: {', '.join(table.columns)})")
    conditions = [(index[c], op, v) for c, ops in query.where.items() for op, v in ops.items()]
    chosen = [row for row in table.rows
              if all(i < len(row) and _matches(row[i], op, v) for i, op, v in conditions)]
    if query.column is None:
        return len(table.rows), np.ones(len(chosen))
    col = index[query.column]
    cells = [row[col] if col < len(row) else "" for row in chosen]
    if query.statistic == "count":  # rows where the column has a value
        return len(table.rows), np.array([1.0 for c in cells if c.strip()])
    values = [v for v in (_as_float(c) for c in cells) if v is not None]
    return len(table.rows), np.array(values, dtype=float)


def compute(query: Query, values: np.ndarray) -> tuple[str, Any]:
    """(mechanism, value) of the query over `values`, with diffprivlib; any of its leak warnings
    is an error."""
    from diffprivlib import tools
    from diffprivlib.mechanisms import GaussianAnalytic
    from diffprivlib.utils import DiffprivlibCompatibilityWarning, PrivacyLeakWarning

    eps = query.epsilon
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyLeakWarning)
        warnings.simplefilter("error", DiffprivlibCompatibilityWarning)
        try:
            return _compute(query, values, eps, tools, GaussianAnalytic)
        except (PrivacyLeakWarning, DiffprivlibCompatibilityWarning) as exc:
            raise BadInput(f"diffprivlib refused this query: {exc}") from None
        except (TypeError, ValueError) as exc:  # diffprivlib's own checks of epsilon, bounds, bins
            raise BadInput(f"diffprivlib refused this query: {exc}") from None


def _compute(query: Query, values: np.ndarray, eps: float, tools, gaussian) -> tuple[str, Any]:
    stat = query.statistic
    if stat == "count":
        if query.delta > 0:
            mech = gaussian(epsilon=eps, delta=query.delta, sensitivity=1)
            return "diffprivlib.GaussianAnalytic", max(0, int(round(mech.randomise(float(len(values))))))
        return "diffprivlib.tools.count_nonzero", int(tools.count_nonzero(values, epsilon=eps))
    lower, upper = query.bounds
    if stat == "sum":
        return "diffprivlib.tools.sum", float(tools.sum(values, epsilon=eps, bounds=(lower, upper)))
    if stat in ("mean", "var"):
        if values.size == 0:  # see the module's docstring: no data-dependent errors
            values = np.array([(lower + upper) / 2])
        fn = tools.mean if stat == "mean" else tools.var
        return f"diffprivlib.tools.{stat}", float(fn(values, epsilon=eps, bounds=(lower, upper)))
    if stat == "histogram":
        counts, edges = tools.histogram(values, epsilon=eps, bins=query.bins, range=(lower, upper))
        return "diffprivlib.tools.histogram", {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}
    if stat == "quantile":
        return "diffprivlib.tools.quantile", float(tools.quantile(values, query.quantile, epsilon=eps,
                                                                  bounds=(lower, upper)))
    raise NotFound(f"unknown statistic {stat!r}")
