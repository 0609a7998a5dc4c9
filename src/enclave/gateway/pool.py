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

A catalog model's weights are fingerprinted again when it is first loaded; a directory whose files
changed since onboarding is refused (an operator re-onboards it), so the review's weight checks and
the served weights never disagree.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
        self._engines: dict[str, Engine] = {self.default_dir: default}
        self._loading: dict[str, threading.Lock] = {}
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
            return sorted(self._engines)

    async def engine(self, choice: Choice) -> Engine:
        with self._guard:
            engine = self._engines.get(choice.directory)
        if engine is not None:
            return engine
        return await asyncio.to_thread(self._load, choice)

    def _load(self, choice: Choice) -> Engine:
        with self._guard:
            lock = self._loading.setdefault(choice.directory, threading.Lock())
        with lock:
            with self._guard:
                if self._closed:
                    raise Unavailable("the gateway is shutting down")
                engine = self._engines.get(choice.directory)
            if engine is not None:
                return engine
            if choice.weights_sha256 is not None:
                digest, _ = catalog.fingerprint(choice.directory)
                if digest != choice.weights_sha256:
                    raise Unavailable(f"the weights of model {choice.name!r} changed since it was onboarded: an "
                                      f"operator must check and onboard them again")
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
                self._engines[choice.directory] = engine
            return engine

    def close(self) -> None:
        """Stop the engines this pool loaded (the default one belongs to whoever made it)."""
        with self._guard:
            self._closed = True
            engines = [e for d, e in self._engines.items() if d != self.default_dir]
            self._engines = {self.default_dir: self.default}
        for engine in engines:
            engine.close()
