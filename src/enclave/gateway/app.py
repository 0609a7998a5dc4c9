"""The model API: GPT-2's forward pass behind authentication, metering and the audit log.

Every model call goes: identify the caller -> the registry decides (same transaction) -> reserve
the worst-case cost -> run on the engine -> settle the actual cost and record the call (one
transaction with its audit event). The routes are in `routes`, what they are given in `deps`, the
answers to failures in `http_errors`; this module puts them together, and at start-up hands the
engine the kept secret that keys its sampling seeds (`settings.sampling_secret_file`).
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from enclave.gateway import quota
from enclave.gateway.deps import GatewayState
from enclave.gateway.engine import Engine
from enclave.gateway.http_errors import install_error_handlers
from enclave.gateway.model import load_model
from enclave.gateway.pool import ModelPool
from enclave.gateway.routes import router
from enclave.gateway.schemas import ErrorBody
from enclave.gateway.settings import GatewaySettings, SettingsError, keep_hub_offline
from enclave.registry.db import check_schema, make_engine, session_scope
from enclave.web.browser_session import load_or_create_secret
from enclave.web.hub_auth import HubIdentity


def _sampling_secret(settings: GatewaySettings) -> bytes | None:
    """The kept secret that keys sampling seeds (made on first start), or None for a random one."""
    if settings.sampling_secret_file is None:
        return None
    try:
        return load_or_create_secret(settings.sampling_secret_file)
    except ValueError:
        raise SettingsError(f"the sampling secret {settings.sampling_secret_file} is shorter than 32 bytes; "
                            "remove it and a new one is made at the next start") from None
    except OSError as exc:
        raise SettingsError(f"cannot read or create the sampling secret {settings.sampling_secret_file}: "
                            f"{exc.strerror or exc}") from None


def create_app(settings: GatewaySettings, engine: Engine | None = None) -> FastAPI:
    """The gateway app. Pass a started `engine` to share one (tests, benchmarks); otherwise the
    app loads `settings.model_dir` at start-up and owns the engine. That is the default model; the
    registry's catalog models are loaded when first asked for (`enclave.gateway.pool`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        db = make_engine(settings.db_url)
        check_schema(db)
        with session_scope(db) as session:
            quota.sweep_stale(session)
        secret = _sampling_secret(settings)
        owned = None
        if engine is None:
            keep_hub_offline()
            owned = Engine(load_model(settings.model_dir, device=settings.device), max_batch=settings.max_batch,
                           max_queue=settings.max_queue, kernel_settings=settings.kernels)
            owned.start()
        serving = engine or owned
        if secret is not None:
            serving.use_sampling_secret(secret)
        # The catalog's models load on first use, each with its own engine (`pool`).
        models = ModelPool(settings, serving, sampling_secret=secret)
        app.state.gateway = GatewayState(settings=settings, db=db, engine=serving, models=models,
                                         identity=HubIdentity(settings.hub_api_url, settings.service_name))
        try:
            yield
        finally:
            app.state.gateway.close()  # stop the heartbeat before the database goes
            models.close()
            if owned is not None:
                owned.close()
            db.dispose()

    app = FastAPI(
        title="Model Enclave gateway",
        version="1",
        description="GPT-2's forward pass for approved projects: metered, audited, and never the weights.",
        lifespan=lifespan,
        responses={401: {"model": ErrorBody}, 402: {"model": ErrorBody}, 403: {"model": ErrorBody},
                   429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    install_error_handlers(app)
    app.include_router(router)
    return app
