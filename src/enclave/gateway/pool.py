"""The models one gateway serves: its default model (ENCLAVE_MODEL_DIR, loaded at start-up) and
every model of the registry's catalog, each loaded on first use and kept with its own engine.

Which model a call gets is decided by the registry on every call (`choose`, no cache), so a
demotion or a new fine-tune counts from the next call on:

- `model` omitted, or naming the default model's directory name: the default model. When the
  default's directory is onboarded in the catalog, it is that catalog entry, with its stage and
  visibility; when it is not, it is served as before the catalog existed (to every project with a
  grant), so a gateway without a catalog behaves as it always did.
- `model` naming a catalog model: that model, if the project may see it
  (`enclave.registry.catalog.require_visible`: its stage against the project's tier, or the
  project's own fine-tune); otherwise a refusal that says why.

A catalog model's weights are fingerprinted again before it is first served (the default model's
too, when it is onboarded); a directory whose files changed since onboarding is refused (an
operator re-onboards it), so the review's weight checks and the served weights never disagree.
Engines are kept by directory *and* onboarded digest, so a re-onboarded directory gets a fresh
engine; a fingerprint is computed again only when the weight files' sizes or times change, so
calls naming a refused model cannot make the gateway hash gigabytes over and over.

Reading a model's shape (`dimensions`, for /v1/hooks and /v1/usage) never loads it: an unmetered
GET must not fill the gateway's memory with models. Loaded models stay until the gateway stops
(no eviction yet).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from pathlib import Path

from enclave.errors import Unavailable
from enclave.gateway.engine import Engine
from enclave.gateway.model import ModelLoadError, load_model
from enclave.gateway.settings import GatewaySettings
from enclave.registry import catalog
from enclave.registry.models import Project

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The registry's answer for one call: the model's name as callers see it, its directory, and
    its onboarded weights digest (None for the default model outside the catalog)."""

    name: str
    directory: str
    weights_sha256: str | None = None


class ModelPool:
    """Engines by model directory. The default engine is given; others are loaded on first use
    (in a worker thread, once even when several calls ask at the same time) and kept until close."""

    def __init__(self, settings: GatewaySettings, default: Engine, *, sampling_secret: bytes | None = None):
        self.settings = settings
        self.default = default
        self.default_dir = str(Path(settings.model_dir).expanduser().resolve())
        self.default_name = default.model_info()["name"]
        self.sampling_secret = sampling_secret
        self._engines: dict[tuple[str, str | None], Engine] = {(self.default_dir, None): default}
        self._loading: dict[tuple[str, str | None], threading.Lock] = {}
        # (directory, onboarded digest) -> (weight files' stat signature, whether the digest matched)
        self._checked: dict[tuple[str, str], tuple[tuple, bool]] = {}
        self._guard = threading.Lock()
        self._closed = False

    def choose(self, session, project: Project, requested: str | None) -> Choice:
        """Which model a call of `project` asking for `requested` gets (see the module's doc)."""
        if requested is None or (requested == self.default_name and catalog.find_model(session, requested) is None):
            entry = self.default_entry(session)
            if entry is None:
                return Choice(self.default_name, self.default_dir)
            requested = entry.name
        try:
            entry = catalog.require_visible(session, project, requested)
        except catalog.UnknownModel:
            names = ([self.default_name] if self.default_entry(session) is None else []) + [
                e.name for e in catalog.visible_models(session, project)]
            raise catalog.UnknownModel(f"no model {requested!r} for project {project.slug!r}: this gateway serves it "
                                       f"{', '.join(names) or 'no model'} (GET /v1/models)") from None
        return Choice(entry.name, entry.directory, entry.weights_sha256)

    def default_entry(self, session):
        """The catalog entry of the default model's directory, or None when it is not onboarded."""
        return catalog.find_by_directory(session, self.default_dir)

    def loaded(self) -> list[str]:
        with self._guard:
            return sorted({directory for directory, _ in self._engines})

    def _key(self, choice: Choice) -> tuple[str, str | None]:
        # The default engine serves the default directory whatever its catalog digest, once the
        # digest is checked (`_check_weights`).
        return (choice.directory, None) if choice.directory == self.default_dir else (
            choice.directory, choice.weights_sha256)

    def _check_weights(self, choice: Choice) -> None:
        """Refuse a catalog model whose weight files changed since onboarding; fingerprint only when
        the files' sizes or times differ from the last check."""
        if choice.weights_sha256 is None:
            return
        files = catalog.weight_files(choice.directory)
        signature = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        key = (choice.directory, choice.weights_sha256)
        with self._guard:
            known = self._checked.get(key)
        if known is None or known[0] != signature:
            digest, _ = catalog.fingerprint(choice.directory)
            known = (signature, digest == choice.weights_sha256)
            with self._guard:
                self._checked[key] = known
        if not known[1]:
            raise Unavailable(f"the weights of model {choice.name!r} changed since it was onboarded: an "
                              f"operator must check and onboard them again")

    async def engine(self, choice: Choice) -> Engine:
        with self._guard:
            engine = self._engines.get(self._key(choice))
        if engine is not None and choice.weights_sha256 is None:
            return engine
        if engine is not None:
            await asyncio.to_thread(self._check_weights, choice)
            return engine
        return await asyncio.to_thread(self._load, choice)

    def dimensions(self, choice: Choice) -> dict:
        """The model's sizes, from its loaded engine or else its config.json (never loading it)."""
        with self._guard:
            engine = self._engines.get(self._key(choice))
        if engine is not None:
            return engine.dimensions()
        try:
            config = json.loads((Path(choice.directory) / "config.json").read_text(encoding="utf-8"))
            n_embd = int(config["n_embd"])
            return {"n_layer": int(config["n_layer"]), "d_model": n_embd, "n_head": int(config["n_head"]),
                    "d_mlp": int(config.get("n_inner") or 4 * n_embd), "vocab": int(config["vocab_size"]),
                    "context": int(config["n_positions"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Unavailable(f"model {choice.name!r} cannot be described: its config.json is unreadable "
                              f"({type(exc).__name__})") from None

    def _load(self, choice: Choice) -> Engine:
        key = self._key(choice)
        with self._guard:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if self._closed:
                    raise Unavailable("the gateway is shutting down")
                engine = self._engines.get(key)
            self._check_weights(choice)
            if engine is not None:
                return engine
            log.info("loading model %s from %s", choice.name, choice.directory)
            try:
                loaded = load_model(choice.directory, device=self.settings.device)
            except ModelLoadError as exc:
                raise Unavailable(f"model {choice.name!r} cannot be served: {exc}") from None
            engine = Engine(loaded, max_batch=self.settings.max_batch, max_queue=self.settings.max_queue,
                            kernel_settings=self.settings.kernels, sampling_secret=self.sampling_secret)
            engine.start()
            with self._guard:
                if self._closed:
                    engine.close()
                    raise Unavailable("the gateway is shutting down")
                self._engines[key] = engine
            return engine

    def close(self) -> None:
        """Stop the engines this pool loaded (the default one belongs to whoever made it)."""
        with self._guard:
            self._closed = True
            engines = [e for key, e in self._engines.items() if e is not self.default]
            self._engines = {(self.default_dir, None): self.default}
        for engine in engines:
            engine.close()
