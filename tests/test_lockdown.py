"""The notebook server's lock-down extension, attacked from the browser's side.

A real `jupyter server` (the venv's jupyter_server, the version the image ships) runs in a
subprocess with the extension from enclave_image/lockdown on its path, under a JupyterHub-like
base URL. Every known way of pulling a file out in bulk must get 403 with a reason, while what
JupyterLab does (open a small file, round-trip a notebook, upload) keeps working.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websocket

from tests.helpers import free_port, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
LOCKDOWN_SRC = REPO / "enclave_image" / "lockdown"
BASE = "/user/alice/"
CAP = 1_000_000
DATASET_ROW = "id,name,postcode\n1,Ada Lovelace,NW1 2DB\n"


def _notebook(outputs: list[dict] | None = None, source: str = "print('hi')") -> dict:
    return {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1,
                   "source": source, "outputs": outputs or []}],
    }


class Server:
    def __init__(self, url: str, token: str, root: Path, log: Path):
        self.url, self.token, self.root, self.log = url, token, root, log

    def client(self, auth: bool = True) -> httpx.Client:
        headers = {"Authorization": f"token {self.token}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def raw_get(self, raw_path: str, auth: bool = True) -> tuple[int, str]:
        """GET a path exactly as written (httpx would resolve '.' and '..' before sending)."""
        parsed = urlsplit(self.url)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        try:
            conn.request("GET", parsed.path + raw_path,
                         headers={"Authorization": f"token {self.token}"} if auth else {})
            reply = conn.getresponse()
            return reply.status, reply.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def log_events(self, event: str) -> list[dict]:
        found = re.findall(rf"{event} (\{{.*\}})$", self.log.read_text(), flags=re.MULTILINE)
        return [json.loads(line) for line in found]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lockdown")
    root = tmp / "home"
    (root / "work").mkdir(parents=True)
    (root / "datasets").mkdir()
    (root / "work" / "small.txt").write_text("a small work file\n")
    (root / "work" / "big.bin").write_bytes(os.urandom(2_000_000))
    (root / "datasets" / "people.csv").write_text(DATASET_ROW * 10)
    (root / "work" / "link.csv").symlink_to(root / "datasets" / "people.csv")
    (root / "work" / "outside").symlink_to("/etc/hostname")
    huge_output = {"output_type": "stream", "name": "stdout", "text": "y" * 2_000_000}
    small_output = {"output_type": "stream", "name": "stdout", "text": "kept\n"}
    (root / "work" / "huge-output.ipynb").write_text(json.dumps(_notebook([small_output, huge_output])))

    config_dir, runtime = tmp / "config", tmp / "runtime"
    config_dir.mkdir()
    (config_dir / "serverconfig").mkdir()
    # The config API reads JSON from here: a stand-in for any route that serves a kernel-writable
    # file (JupyterLab's settings and workspaces), which only the backstop cap covers.
    (config_dir / "serverconfig" / "planted.json").write_text(json.dumps({"data": "z" * 2_000_000}))
    (config_dir / "jupyter_server_config.py").write_text(
        "c = get_config()  # noqa\n"
        "c.ServerApp.jpserver_extensions = {'enclave_lockdown': True}\n"
        "c.ServerApp.reraise_server_extension_failures = True\n"
        "c.ServerApp.terminals_enabled = False\n"
        f"c.EnclaveLockdown.max_read_bytes = {CAP}\n"
        f"c.EnclaveLockdown.max_output_bytes = {CAP}\n"
    )
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(LOCKDOWN_SRC), os.environ.get("PYTHONPATH", "")]),
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp / "server.log"
    argv = [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--ServerApp.root_dir={root}", f"--ServerApp.base_url={BASE}",
            f"--IdentityProvider.token={token}", "--ServerApp.log_level=INFO", "--allow-root"]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=root)
    srv = Server(f"http://127.0.0.1:{port}{BASE}", token, root, log)
    try:
        wait_until_serving(srv.url + "api/status", proc, log, "the jupyter server",
                           headers={"Authorization": f"token {token}"})
        assert "enclave lockdown active" in log.read_text()
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _assert_refused(reply: httpx.Response, *, why: str | None = None) -> None:
    assert reply.status_code == 403, (reply.request.url, reply.status_code, reply.text[:300])
    assert len(reply.content) < 2000, "a refusal must not carry the content"
    if why is not None:
        assert why in reply.json()["message"], reply.text


# --- what JupyterLab does keeps working ----------------------------------------------------------

def test_small_file_opens_like_jupyterlab_opens_it(server):
    with server.client() as c:
        reply = c.get("api/contents/work/small.txt", params={"type": "file", "format": "text", "content": "1"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["content"] == "a small work file\n"
        listing = c.get("api/contents/work")
        assert listing.status_code == 200
        assert {"small.txt", "big.bin"} <= {item["name"] for item in listing.json()["content"]}
    reads = [e for e in server.log_events("contents_read") if e["path"] == "work/small.txt"]
    assert reads and reads[-1]["allowed"] is True and reads[-1]["user"] and reads[-1]["size"] > 0


def test_notebook_round_trips(server):
    notebook = _notebook([{"output_type": "stream", "name": "stdout", "text": "hi\n"}])
    with server.client() as c:
        saved = c.put("api/contents/work/analysis.ipynb", json={"type": "notebook", "content": notebook})
        assert saved.status_code in (200, 201), saved.text
        back = c.get("api/contents/work/analysis.ipynb", params={"type": "notebook", "content": "1"})
        assert back.status_code == 200, back.text
        cell = back.json()["content"]["cells"][0]
        assert cell["source"] == "print('hi')" and cell["outputs"][0]["text"] == "hi\n"
        notebook["cells"][0]["source"] = "print('edited')"
        assert c.put("api/contents/work/analysis.ipynb", json={"type": "notebook", "content": notebook}).status_code == 200
        again = c.get("api/contents/work/analysis.ipynb").json()
        assert again["content"]["cells"][0]["source"] == "print('edited')"
        checkpoints = c.get("api/contents/work/analysis.ipynb/checkpoints")
        assert checkpoints.status_code == 200


def test_uploads_are_ingress_and_stay_allowed(server):
    payload = os.urandom(1_500_000)
    with server.client() as c:
        reply = c.put("api/contents/work/upload.bin",
                      json={"type": "file", "format": "base64", "content": base64.b64encode(payload).decode()})
        assert reply.status_code in (200, 201), reply.text
        assert (server.root / "work" / "upload.bin").read_bytes() == payload
        # ...but what went in does not come back out in bulk.
        _assert_refused(c.get("api/contents/work/upload.bin", params={"format": "base64"}), why="limit")


# --- size cap on contents reads -------------------------------------------------------------------

def test_file_over_the_cap_is_refused_in_any_format(server):
    with server.client() as c:
        for params in ({}, {"format": "base64"}, {"format": "text"}, {"type": "file", "format": "base64"},
                       {"hash": "1"}):
            _assert_refused(c.get("api/contents/work/big.bin", params=params))
        # Asked for as a notebook, the server parses it (to withhold outputs) and finds no notebook.
        as_notebook = c.get("api/contents/work/big.bin", params={"type": "notebook"})
        assert as_notebook.status_code == 400 and len(as_notebook.content) < 2000
        meta = c.get("api/contents/work/big.bin", params={"content": "0"})
        assert meta.status_code == 200 and meta.json()["size"] == 2_000_000 and meta.json()["content"] is None
    refused = [e for e in server.log_events("contents_read") if e["path"] == "work/big.bin" and not e["allowed"]]
    assert refused and refused[0]["size"] == 2_000_000 and "limit" in refused[0]["reason"]


def test_notebook_with_huge_saved_output_opens_with_the_output_withheld(server):
    with server.client() as c:
        reply = c.get("api/contents/work/huge-output.ipynb", params={"type": "notebook"})
        assert reply.status_code == 200, reply.text[:300]
        assert len(reply.content) < CAP
        outputs = reply.json()["content"]["cells"][0]["outputs"]
        assert outputs[0]["text"] == "kept\n"
        assert "withheld" in outputs[1]["text"] and "y" * 100 not in outputs[1]["text"]
        # Read raw, the same file is simply over the cap.
        _assert_refused(c.get("api/contents/work/huge-output.ipynb", params={"type": "file"}))


# --- datasets are readable from kernels only -------------------------------------------------------

def test_dataset_files_are_never_read_through_the_contents_api(server):
    with server.client() as c:
        listing = c.get("api/contents/datasets")
        assert listing.status_code == 200 and [i["name"] for i in listing.json()["content"]] == ["people.csv"]
        for raw_path in [
            "api/contents/datasets/people.csv",
            "api/contents/datasets/people.csv?format=base64&type=file",
            "api/contents/datasets/people.csv?type=notebook",
            "api/contents/datasets/people.csv?content=1&format=text&hash=1",
            "api/contents/work/link.csv",                    # a symlink a kernel planted
            "api/contents/work/../datasets/people.csv",      # traversal
            "api/contents/work/%2e%2e/datasets/people.csv",  # encoded traversal
            "api/contents/work/%252e%252e/datasets/people.csv",
            "api/contents//datasets//people.csv",           # doubled slashes
            "api/contents/datasets%2Fpeople.csv",            # encoded slash
            "api/contents/./datasets/people.csv",
        ]:
            status, text = server.raw_get(raw_path)
            # 404 where Tornado routes the spelling nowhere; never the content.
            assert status in (403, 404), (raw_path, status, text[:300])
            assert "Ada Lovelace" not in text
        copied = c.post("api/contents/work", json={"copy_from": "datasets/people.csv"})
        _assert_refused(copied, why="datasets")
        assert not any(p.name.startswith("people") for p in (server.root / "work").iterdir())
        # Metadata only (what a directory listing shows) is fine.
        meta = c.get("api/contents/datasets/people.csv", params={"content": "0"})
        assert meta.status_code == 200 and meta.json()["content"] is None
    refused = [e for e in server.log_events("contents_read") if e["path"] == "datasets/people.csv"]
    assert refused and not refused[0]["allowed"] and "datasets" in refused[0]["reason"]


def test_links_out_of_the_root_are_not_followed(server):
    with server.client() as c:
        _assert_refused(c.get("api/contents/work/outside"), why="outside")


# --- routes that serve files in bulk ---------------------------------------------------------------

FILES_SPELLINGS = [
    "files/work/small.txt",
    "FILES/work/small.txt",
    "Files/work/small.txt",
    "%66iles/work/small.txt",
    "%2566iles/work/small.txt",      # double-encoded
    "files%2Fwork%2Fsmall.txt",
    "/files/work/small.txt",         # doubled slash after the base URL
    "./files/work/small.txt",
    "work/../files/work/small.txt",
    "files\\work\\small.txt",
    "files",
    "view/work/small.txt",
    "VIEW/work/small.txt",
    "nbconvert/html/work/analysis.ipynb",
    "nbconvert/script/work/analysis.ipynb",
    "nbconvert/notebook/work/analysis.ipynb",
    "nbconvert/asciidoc/work/small.txt",
    "NbConvert/html/work/analysis.ipynb",
    "api/nbconvert",
    "api//nbconvert",
    "api/terminals",
    "terminals/websocket/1",
]


@pytest.mark.parametrize("path", FILES_SPELLINGS)
def test_bulk_routes_are_refused_however_spelled(server, path):
    status, text = server.raw_get(path)
    assert status == 403, (path, status, text[:300])
    assert "a small work file" not in text
    assert json.loads(text)["reason"] == "Forbidden by enclave policy"


def test_nbconvert_post_and_download_flags_are_refused(server):
    with server.client() as c:
        _assert_refused(c.post("nbconvert/html", json={"content": _notebook()}))
        _assert_refused(c.get("api/contents/work/small.txt", params={"download": "1"}), why="download")
        _assert_refused(c.get("api/contents/work/small.txt", params={"Download": "true"}), why="download")
    assert any(e["path"].endswith("nbconvert/html") for e in server.log_events("route_refused"))


def test_refusals_tell_strangers_nothing(server):
    status, text = server.raw_get("files/work/small.txt", auth=False)
    assert status == 403 and "files" not in text
    with server.client(auth=False) as c:
        assert c.get("api/contents/work/small.txt").status_code == 403


def test_backstop_caps_routes_that_serve_kernel_writable_files(server):
    with server.client() as c:
        reply = c.get("api/config/planted")
        _assert_refused(reply, why="limit")
        assert "zzzz" not in reply.text
        # Packaged static assets stay exempt, whatever their size.
        assert c.get("static/style/bootstrap.min.css").status_code == 200
    assert any(e["path"].endswith("api/config/planted") for e in server.log_events("response_capped"))


# --- kernel output over the websocket --------------------------------------------------------------

def _execute(server: Server, kernel_id: str, code: str, subprotocol: str | None) -> list[tuple[str, dict, int]]:
    """Run `code` through the kernel websocket; return (msg_type, content, wire size) of each reply."""
    from jupyter_server.services.kernels.connection.base import (
        deserialize_msg_from_ws_v1,
        serialize_msg_to_ws_v1,
    )

    url = server.url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(url, header=[f"Authorization: token {server.token}"], timeout=60,
                                     subprotocols=[subprotocol] if subprotocol else None)
    msg_id = uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "alice",
                   "session": uuid.uuid4().hex, "version": "5.3", "date": "2026-01-01T00:00:00Z"},
        "parent_header": {}, "metadata": {}, "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }
    try:
        if subprotocol:
            ws.send_binary(serialize_msg_to_ws_v1(request, "shell", pack=lambda m: json.dumps(m).encode()))
        else:
            ws.send(json.dumps({**request, "channel": "shell"}))
        received: list[tuple[str, dict, int]] = []
        idle = replied = False
        deadline = time.time() + 60
        while not (idle and replied) and time.time() < deadline:
            frame = ws.recv()
            if subprotocol:
                channel, parts = deserialize_msg_from_ws_v1(frame)
                header, parent, content = (json.loads(parts[i]) for i in (0, 1, 3))
            else:
                msg = json.loads(frame)
                header, parent, content = msg["header"], msg["parent_header"], msg["content"]
            if parent.get("msg_id") != msg_id:
                continue
            received.append((header["msg_type"], content, len(frame)))
            idle = idle or (header["msg_type"] == "status" and content["execution_state"] == "idle")
            replied = replied or header["msg_type"] == "execute_reply"
        return received
    finally:
        ws.close()


@pytest.fixture(scope="module")
def kernel_id(server):
    with server.client() as c:
        reply = c.post("api/kernels", json={"name": "python3"})
        assert reply.status_code == 201, reply.text
        yield reply.json()["id"]
        c.delete(f"api/kernels/{reply.json()['id']}")


@pytest.mark.parametrize("subprotocol", [None, "v1.kernel.websocket.jupyter.org"], ids=["json", "v1"])
def test_huge_kernel_output_is_capped_on_the_websocket(server, kernel_id, subprotocol):
    received = _execute(server, kernel_id, "print('hello from the kernel')", subprotocol)
    assert ("stream", {"name": "stdout", "text": "hello from the kernel\n"}) in [(t, c) for t, c, _ in received]

    for code in ("print('x' * 5_000_000)",
                 "from IPython.display import display; display({'text/plain': 'x' * 5_000_000}, raw=True)",
                 "'x' * 5_000_000",
                 "raise ValueError('x' * 5_000_000)",
                 # A pager payload on the execute_reply (what `%pycat file` or `obj?` produce).
                 "get_ipython().payload_manager.write_payload("
                 "{'source': 'page', 'data': {'text/plain': 'x' * 5_000_000}, 'start': 0})"):
        received = _execute(server, kernel_id, code, subprotocol)
        assert all(size < 20_000 for _, _, size in received), [(t, s) for t, _, s in received]
        shown = json.dumps([c for _, c, _ in received])
        assert "withheld" in shown, (code, shown[:500])
        assert "x" * 1000 not in shown
    # A comm message (what widgets use) over the cap is not rebuilt but dropped.
    received = _execute(server, kernel_id, "from comm import create_comm\n"
                        "create_comm(target_name='bulk', data={'rows': 'x' * 5_000_000})", subprotocol)
    assert all(size < 20_000 for _, _, size in received)
    assert "x" * 1000 not in json.dumps([c for _, c, _ in received])

    capped = server.log_events("kernel_output_capped")
    assert {"stream", "display_data", "execute_result", "error", "execute_reply"} <= {e["msg_type"] for e in capped}
    assert any(e["msg_type"] == "comm_open" and e["action"] == "dropped" for e in capped)
    assert all(e["size"] > 5_000_000 and e["cap"] == CAP for e in capped)


# --- the pure decisions, directly ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lockdown_modules():
    sys.path.insert(0, str(LOCKDOWN_SRC))
    try:
        from enclave_lockdown import kernel_messages, notebook_outputs, request_paths

        yield request_paths, kernel_messages, notebook_outputs
    finally:
        sys.path.remove(str(LOCKDOWN_SRC))


def test_refusal_reasons_follow_the_normalised_path(lockdown_modules):
    request_paths = lockdown_modules[0]
    reason = request_paths.refusal_reason
    assert reason("/user/alice/api/contents/work/a.txt", [], BASE) is None
    assert reason("/user/alice/lab/tree/files/a.txt", [], BASE) is None  # a page, not a file
    assert reason("/user/alice/filesystem.txt", [], BASE) is None  # only the whole segment counts
    assert "files" in reason("/user/alice/files/a.txt", [], BASE)
    assert "files" in reason("/USER/Alice/%46ILES/a.txt", [], BASE)
    assert "encoded" in reason("/user/alice/%252525252566iles/a", [], BASE)  # six layers deep
    assert "'..'" in reason("/user/alice/api/contents/a/%2E%2E/b", [], BASE)
    assert "download" in reason("/user/alice/api/contents/a.txt", ["DOWNLOAD"], BASE)
    assert "nbconvert" in reason("/user/alice/api\\nbconvert", [], BASE)
    static = request_paths.is_read_only_static
    assert static("/user/alice/static/lab/main.js", BASE)
    assert not static("/user/alice/static/..%2F..%2Fapi/contents/big", BASE)
    assert not static("/user/alice/api/contents/static/x", BASE)
    assert not static("/user/alice//static/x", BASE)


def test_oversized_kernel_messages_are_rebuilt_small(lockdown_modules):
    kernel_messages = lockdown_modules[1]
    big = "x" * 2_000_000
    header = {"msg_id": "m" * 10_000, "msg_type": "display_data", "session": "s", "username": "u",
              "date": "2026-01-01T00:00:00Z", "version": "5.3", "evil": big}
    msg = {"header": header, "parent_header": {"msg_id": "p", "extra": big}, "metadata": {"m": big},
           "content": {"data": {"text/html": big}, "metadata": {}, "transient": {"display_id": "d1"}},
           "buffers": [b"b" * 100]}
    out = kernel_messages.withhold_oversized(msg, size=6_000_100, cap=CAP)
    assert len(json.dumps(out, default=str)) < 5_000
    assert out["header"]["msg_type"] == "display_data" and "evil" not in out["header"]
    assert out["content"]["transient"] == {"display_id": "d1"} and out["buffers"] == []
    assert "withheld" in out["content"]["data"]["text/plain"]
    for msg_type, field in [("stream", "text"), ("error", "evalue"), ("inspect_reply", "data"),
                            ("history_reply", "history"), ("kernel_info_reply", "evalue")]:
        replaced = kernel_messages.withhold_oversized(
            {**msg, "header": {**header, "msg_type": msg_type}, "content": {"text": big, "name": "stdout"}},
            size=2_000_000, cap=CAP)
        assert field in replaced["content"] and big not in json.dumps(replaced["content"]), msg_type
    assert kernel_messages.withhold_oversized({**msg, "header": {**header, "msg_type": "comm_msg"}},
                                              size=2_000_000, cap=CAP) is None


def test_notebook_outputs_shrink_to_the_budget(lockdown_modules):
    notebook_outputs = lockdown_modules[2]
    outputs = [{"output_type": "stream", "name": "stdout", "text": "a" * 300_000} for _ in range(5)]
    outputs.append({"output_type": "stream", "name": "stdout", "text": "small\n"})
    notebook = _notebook(outputs)
    withheld = notebook_outputs.withhold_notebook_outputs(notebook, max_output_bytes=CAP, budget_bytes=CAP)
    assert len(json.dumps(notebook)) <= CAP
    kept = notebook["cells"][0]["outputs"]
    assert withheld == sum("withheld" in o["text"] for o in kept) >= 2
    assert kept[-1]["text"] == "small\n"  # the largest go first; small outputs stay
