"""Cap what a kernel sends to the browser over the kernel websocket.

The kernel runs the scholar's code, so every part of a kernel message is attacker-controlled:
not only outputs (stream, display_data, execute_result, error) but replies (inspect, complete,
history), comm messages, payloads, metadata, buffers and even headers. So the cap is on the
whole message as it arrived on ZMQ, and an oversized message is rebuilt from scratch: bounded
headers, no metadata, no buffers, and content that says the output was withheld.
"""
from __future__ import annotations

from typing import Any

from .notebook_outputs import withheld_notice

# Header fields a frontend needs to route a message, each cut to a sane length.
_HEADER_KEYS = ("msg_id", "msg_type", "session", "username", "date", "version", "subshell_id")
_MAX_HEADER_FIELD = 256

# Output messages become a notice of the same kind, so the frontend shows it where the output
# would have gone.
_OUTPUT_TYPES = {"display_data", "update_display_data", "execute_result"}


def _bounded_header(header: Any) -> dict[str, Any]:
    if not isinstance(header, dict):
        return {}
    bounded: dict[str, Any] = {}
    for key in _HEADER_KEYS:
        if key not in header:
            continue
        value = header[key]
        if isinstance(value, (int, float, type(None))) or (key == "date" and not isinstance(value, str)):
            bounded[key] = value  # numbers, None, and the datetime the session parsed
        else:
            bounded[key] = str(value)[:_MAX_HEADER_FIELD]
    return bounded


def _short(value: Any, limit: int = 200) -> str:
    return str(value)[:limit] if value is not None else ""


def _withheld_content(msg_type: str, content: Any, notice: str) -> dict[str, Any] | None:
    """The replacement content for a message type, or None where the message is dropped."""
    content = content if isinstance(content, dict) else {}
    if msg_type == "stream":
        name = content.get("name") if content.get("name") in ("stdout", "stderr") else "stderr"
        return {"name": name, "text": notice}
    if msg_type in _OUTPUT_TYPES:
        replacement: dict[str, Any] = {"data": {"text/plain": notice}, "metadata": {}}
        transient = content.get("transient")
        if isinstance(transient, dict) and isinstance(transient.get("display_id"), str):
            # Keep the display id so later update_display_data messages still find their target.
            replacement["transient"] = {"display_id": transient["display_id"][:_MAX_HEADER_FIELD]}
        if msg_type == "execute_result":
            replacement["execution_count"] = content.get("execution_count")
        return replacement
    if msg_type == "error":
        return {"ename": _short(content.get("ename")) or "Error", "evalue": notice, "traceback": [notice]}
    if msg_type == "execute_reply":
        # Payloads (e.g. %load's set_next_input, pager text) and user_expressions can carry data.
        reply: dict[str, Any] = {
            "status": content.get("status") if content.get("status") in ("ok", "error", "aborted") else "error",
            "execution_count": content.get("execution_count") if isinstance(content.get("execution_count"), int) else None,
            # The notice goes to JupyterLab's pager, where the withheld payload would have shown.
            "payload": [{"source": "page", "data": {"text/plain": notice}, "start": 0}],
            "user_expressions": {},
        }
        if reply["status"] == "error":
            reply.update(ename=_short(content.get("ename")) or "Error", evalue=notice, traceback=[notice])
        return reply
    if msg_type == "inspect_reply":
        return {"status": "ok", "found": True, "data": {"text/plain": notice}, "metadata": {}}
    if msg_type == "complete_reply":
        return {"status": "ok", "matches": [], "cursor_start": 0, "cursor_end": 0, "metadata": {}}
    if msg_type == "history_reply":
        return {"status": "ok", "history": []}
    if msg_type == "input_request":
        return {"prompt": notice, "password": bool(content.get("password"))}
    if msg_type.endswith("_reply"):
        # Any other reply: answer it (a frontend may be waiting) but with an error, not the data.
        return {"status": "error", "ename": "OutputWithheld", "evalue": notice, "traceback": [notice]}
    # comm_msg, comm_open and other broadcasts: a widget that ships bulk data does not get it.
    return None


def withhold_oversized(msg: dict[str, Any], size: int, cap: int) -> dict[str, Any] | None:
    """Rebuild an oversized kernel message (`size` bytes on the wire) as a small notice.

    `msg` is a deserialized Jupyter message (header, parent_header, metadata, content, buffers).
    Returns the replacement message, or None if it should be dropped.
    """
    header = _bounded_header(msg.get("header"))
    msg_type = str(header.get("msg_type") or "")
    content = _withheld_content(msg_type, msg.get("content"), withheld_notice(size, cap))
    if content is None:
        return None
    return {
        "header": header,
        "parent_header": _bounded_header(msg.get("parent_header")),
        "metadata": {},
        "content": content,
        "buffers": [],
    }
