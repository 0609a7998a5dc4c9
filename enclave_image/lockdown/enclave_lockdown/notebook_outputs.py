"""Withhold oversized outputs of saved notebooks before the contents API returns them.

A kernel can write any notebook file it likes, so outputs read back from disk need the same cap
as outputs streamed over the kernel websocket. Withheld outputs become a stderr stream output
that says what happened: it is valid nbformat, so the notebook still opens and saves.
"""
from __future__ import annotations

import json
from typing import Any


def withheld_notice(size: int, cap: int, *, whole_notebook: bool = False) -> str:
    """The text that replaces a withheld output, in notebooks and in live kernel messages."""
    why = (f"this notebook is over the {cap:,}-byte limit for what the browser may receive, and this "
           f"{size:,}-byte output is among its largest" if whole_notebook else
           f"{size:,} bytes is over the {cap:,}-byte limit for what the browser may receive")
    return (f"[enclave] output withheld: {why}. Summarise it in the kernel, or export it through "
            "output review.\n")


def withheld_output(size: int, cap: int, *, whole_notebook: bool = False) -> dict[str, Any]:
    """An nbformat stream output standing in for a withheld one."""
    return {"output_type": "stream", "name": "stderr",
            "text": withheld_notice(size, cap, whole_notebook=whole_notebook)}


def _json_size(value: Any) -> int:
    return len(json.dumps(value, default=str))


def withhold_notebook_outputs(notebook: dict[str, Any], max_output_bytes: int, budget_bytes: int,
                              response_cap: int | None = None) -> int:
    """Replace outputs in place so none exceeds `max_output_bytes` and the whole fits the budget.

    First every output over the per-output cap goes; then, while the notebook is still over
    `budget_bytes`, the largest remaining output goes. Sources and attachments are never
    touched: if they alone exceed the budget the caller refuses the notebook. `response_cap` is
    the limit the notices quote (the budget is what is left of it after the model's other fields).
    Returns how many outputs were withheld.
    """
    outputs: list[tuple[int, list[Any], int]] = []  # (size, the cell's output list, index)
    withheld = 0
    for cell in notebook.get("cells") or []:
        cell_outputs = cell.get("outputs") if isinstance(cell, dict) else None
        if not isinstance(cell_outputs, list):
            continue
        for index, output in enumerate(cell_outputs):
            size = _json_size(output)
            if size > max_output_bytes:
                cell_outputs[index] = withheld_output(size, max_output_bytes)
                withheld += 1
            else:
                outputs.append((size, cell_outputs, index))

    total = _json_size(notebook)
    outputs.sort(key=lambda entry: entry[0], reverse=True)
    for size, cell_outputs, index in outputs:
        if total <= budget_bytes:
            break
        notice = withheld_output(size, response_cap or budget_bytes, whole_notebook=True)
        cell_outputs[index] = notice
        total -= size - _json_size(notice)
        withheld += 1
    return withheld
