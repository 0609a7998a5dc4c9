"""Talk to a single-user Jupyter server the way JupyterLab does: the REST API for contents and
kernels, and the kernel's websocket channel for running code."""
from __future__ import annotations

import json
import time
import uuid

import httpx
import websocket


class Server:
    def __init__(self, base_url: str, token: str):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"token {token}"}
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60)

    def close(self):
        self.http.close()

    def get(self, path: str, **kw) -> httpx.Response:
        return self.http.get(path, **kw)

    def run(self, code: str, timeout: float = 120) -> str:
        """Run `code` in a fresh kernel; return its stdout. Raises on an error in the kernel."""
        kernel = self.http.post("/api/kernels", json={"name": "python3"})
        kernel.raise_for_status()
        kernel_id = kernel.json()["id"]
        try:
            return _execute(self.base_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels",
                            self.headers, code, timeout)
        finally:
            self.http.delete(f"/api/kernels/{kernel_id}")


def _execute(url: str, headers: dict, code: str, timeout: float) -> str:
    ws = websocket.create_connection(url, header=[f"{k}: {v}" for k, v in headers.items()], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        out, error, idle, replied = [], None, False, False
        deadline = time.time() + timeout
        while not (idle and replied):
            if time.time() > deadline:
                raise TimeoutError(f"kernel did not finish in {timeout} s; output so far: {''.join(out)[-2000:]}")
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content.get("data", {}).get("text/plain", ""))
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        if error:
            raise RuntimeError(f"kernel error: {error}\n{''.join(out)[-2000:]}")
        return "".join(out)
    finally:
        ws.close()
