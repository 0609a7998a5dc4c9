"""A real gateway for tests: a tiny random GPT-2 with GPT-2's real tokenizer, the engine, and
uvicorn serving the app on a loopback port, over a fresh registry (SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time

import httpx
import pytest

from enclave.registry import grants, keys, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope
from tests.helpers import free_port

OPERATOR = "op"
SCHOLAR = "sam"
PROJECT = "lab"


def build_tiny_model(folder, n_embd: int = 64, n_positions: int = 128, seed: int = 0, sharpen: float = 20):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=n_embd, n_positions=n_positions)
    model = GPT2LMHeadModel(config)
    # Random init gives near-uniform next-token distributions; sharpen them so sampling,
    # top-k and rounding have something to bite on (20: one token takes almost all the mass; 8: a
    # leading token and a long tail of small but non-zero probabilities).
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharpen)
    model.save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory):
    """The same tiny model with a 1,024-token context: long generations that take a while."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2-long"), n_positions=1024)


class RunningGateway:
    def __init__(self, url: str, key: str, db, engine, app=None):
        self.url, self.key, self.db, self.engine, self.app = url, key, db, engine, app

    def client(self, key: str | None = "default", **headers) -> httpx.Client:
        auth = {"Authorization": f"token {self.key if key == 'default' else key}"} if key else {}
        return httpx.Client(base_url=self.url, headers={**auth, **headers}, timeout=60)

    def registry(self):
        return session_scope(self.db)


@contextlib.contextmanager
def serve(db, model_dir, *, grant: dict | None = None, max_batch: int = 8, max_queue: int = 64,
          hub_api_url: str | None = None, sampling_secret_file=None):
    import uvicorn

    from enclave.gateway.app import create_app
    from enclave.gateway.engine import Engine
    from enclave.gateway.model import load_model
    from enclave.gateway.settings import GatewaySettings

    with session_scope(db) as s:
        people.add_person(s, OPERATOR, SCHOLAR, "Sam", "sam@example.org")
        projects.create_project(s, OPERATOR, PROJECT, "Lab", SCHOLAR, "Test the gateway.")
        projects.transition(s, OPERATOR, PROJECT, "approve", until=end_of_day((utcnow() + dt.timedelta(days=30)).date()))
        grants.set_grant(s, OPERATOR, PROJECT, **({"requests_per_minute": 100_000, "logprob_calls_per_day": 100_000,
                                                    "max_tokens_per_request": 512} | (grant or {})))
        _, key = keys.issue(s, OPERATOR, SCHOLAR, PROJECT)
    engine = Engine(load_model(str(model_dir), device="cpu"), max_batch=max_batch, max_queue=max_queue)
    engine.start()
    settings = GatewaySettings(model_dir=str(model_dir), db_url=str(db.url.render_as_string(hide_password=False)),
                               hub_api_url=hub_api_url,
                               **({"sampling_secret_file": sampling_secret_file} if sampling_secret_file else {}))
    port = free_port()
    app = create_app(settings, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", key, db, engine, app)
    finally:
        server.should_exit = True
        thread.join(30)
        engine.close()


@pytest.fixture(scope="session")
def full_size_model_dir(tmp_path_factory):
    """GPT-2 124M's architecture (GPT2Config's defaults) with random weights: a full-size
    checkpoint directory as operators would point the gateway at."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from enclave.demo.tokenizer import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("gpt2-124m")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder
