"""What the gateway's routes are given (FastAPI `Depends`): the service's parts, made once at
start-up, short registry transactions, the caller's credentials, the registry's access decision and
metered model calls.

Dependencies that only look something up are `async`, so they run on the event loop rather than
taking a worker thread. Transactions are short and explicit (`state.run(work)`: one session per unit of work, in a worker
thread), not one session held for the whole request: on SQLite a transaction holds the registry's
only write lock, and a model call runs for seconds. A model call's admission (who is calling, the
registry's decision, the reservation of its worst-case cost) is one such transaction
(`MeteredCall`), so no revocation or grant change can slip between the decision and the
reservation; its settlement is another, after the model has run.

A caller is identified and authorised (`get_metered_call`, a dependency) before the route's body
runs, so nothing is tokenised for a caller who would be refused; the admission then decides again,
in the transaction of the reservation.

Refused calls are counted per minute and caller in `GatewayState.refusal_tally` (see `refusals`) and
written to the audit log by the heartbeat thread once their minute is over, and at shutdown.

Each gateway process is a registered *instance* (`GatewayState` registers it when it is made): it
stamps every reservation with its id and, on a thread of its own (so that a busy event loop cannot
starve it), heartbeats every `heartbeat_s` and sweeps: the open reservations of instances silent for
`dead_after_s` (killed, out of memory) are settled at their worst case, so a crash never locks a
grant for longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import Engine as DbEngine

from enclave.errors import Conflict, UserError
from enclave.gateway import quota, refusals, tiers
from enclave.registry import grants
from enclave.gateway.auth import Caller, authorize, identify
from enclave.gateway.engine import Engine, QueueFull
from enclave.gateway.http_errors import ClientGone
from enclave.gateway.pool import Choice, ModelPool
from enclave.gateway.settings import GatewaySettings, SettingsError
from enclave.registry.access import Access
from enclave.registry.catalog import UnknownModel
from enclave.web.hub_auth import HubIdentity, bearer_token
from enclave.web.session_binding import session_project
from enclave.web.transactions import in_transaction, in_transaction_thread

DISCONNECT_POLL_S = 0.2
log = logging.getLogger(__name__)


@dataclasses.dataclass
class GatewayState:
    """Everything a request handler needs, made once at start-up (no module-level state); the app
    keeps it as `app.state.gateway`."""

    settings: GatewaySettings
    db: DbEngine
    engine: Engine
    identity: HubIdentity
    # Every model this gateway serves, the default (`engine`) among them; None: the default only.
    models: ModelPool | None = None
    refusal_tally: refusals.RefusalTally = dataclasses.field(default_factory=refusals.RefusalTally)
    instance_id: str = dataclasses.field(init=False, default="")
    _stop: threading.Event = dataclasses.field(init=False, repr=False, compare=False, default_factory=threading.Event)
    _keeper: threading.Thread | None = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        """Register this process as a gateway instance and start its heartbeat and sweep. They stop
        with `close()`, or when the app disposes of its database engine at shutdown."""
        heartbeat_s, dead_after_s = self.settings.heartbeat_s, self.settings.dead_after_s
        if heartbeat_s < 1 or dead_after_s < 2 * heartbeat_s:
            raise SettingsError(f"ENCLAVE_GATEWAY_DEAD_AFTER_S ({dead_after_s}) must be at least twice "
                                f"ENCLAVE_GATEWAY_HEARTBEAT_S ({heartbeat_s}), which must be at least 1")
        self.instance_id = self.transaction(quota.register_instance)
        event.listen(self.db, "engine_disposed", self._on_disposed)
        self._keeper = threading.Thread(target=self._keep_alive, name=f"enclave-gateway-heartbeat-{self.instance_id}",
                                        daemon=True)
        self._keeper.start()

    def _keep_alive(self) -> None:
        dead_after = dt.timedelta(seconds=self.settings.dead_after_s)
        while not self._stop.wait(self.settings.heartbeat_s):
            self.flush_refusals()
            try:
                self.transaction(lambda session: quota.heartbeat(session, self.instance_id))
                settled = self.transaction(lambda session: quota.sweep_dead(session, dead_after))
            except Exception as exc:  # a registry outage: keep trying, the next beat may get through
                log.warning("gateway heartbeat failed (will retry): %s", str(exc).splitlines()[0] if str(exc) else exc)
                continue
            if settled:
                log.warning("settled %d reservations of gateway instances that stopped heartbeating "
                            "(charged their worst case)", settled)

    def flush_refusals(self, everything: bool = False) -> int:
        """Write the refusals of minutes that are over (all of them when `everything`) as audit
        events; on a registry outage keep them for the next try. Returns how many events it wrote."""
        groups = self.refusal_tally.take(everything)
        if not groups:
            return 0
        try:
            return self.transaction(lambda session: refusals.write(session, groups))
        except Exception as exc:  # the registry is down: count them again, the next beat may get through
            self.refusal_tally.put_back(groups)
            log.warning("could not record %d refused calls in the audit log (will retry): %s",
                        sum(g.count for g in groups), str(exc).splitlines()[0] if str(exc) else exc)
            return 0

    def refused(self, request: Request, exc: UserError, status: int) -> None:
        """Count a refused call (`refusals.is_refusal`) for the next flush."""
        self.refusal_tally.add(refusals.caller_of(request), exc.code, status, refusals.endpoint_of(request))

    def close(self) -> None:
        """Stop the heartbeat and write every refusal still counted (at shutdown; idempotent)."""
        self._stop.set()
        keeper, self._keeper = self._keeper, None
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(30)
        if keeper is not None:
            self.flush_refusals(everything=True)
            if self.refusal_tally.pending():
                log.error("%d refused calls were not recorded in the audit log: the registry could not be "
                          "reached at shutdown", self.refusal_tally.pending())

    def _on_disposed(self, db: DbEngine) -> None:
        if self._keeper is None:
            return
        self.close()
        db.pool.dispose()  # connections the heartbeat opened while the engine was being disposed

    def transaction(self, work: Callable[[Any], Any]) -> Any:
        return in_transaction(self.db, work)

    def choose(self, session, granted: Access, requested: str | None) -> Choice:
        """Which model `granted`'s project gets when it asks for `requested` (the registry decides,
        every call: `ModelPool.choose`)."""
        if self.models is None:
            name = self.engine.model_info()["name"]
            if requested is not None and requested != name:
                raise UnknownModel(f"this gateway serves {name!r}, not {requested!r}")
            return Choice(name, self.settings.model_dir)
        return self.models.choose(session, granted.project, requested)

    async def served(self, granted: Access, requested: str | None,
                     endpoint: str | None = None) -> tuple[Choice, Engine]:
        """The model a call of `granted` gets, and the engine that runs it (loaded on first use).
        With `endpoint`, refused first (before any model is loaded) unless the project's tier for
        that model includes the endpoint."""
        def decide(session) -> tuple[Choice, str]:
            choice = self.choose(session, granted, requested)
            return choice, grants.tier_for(session, granted.grant, choice.name)

        choice, tier = await self.run(decide)
        if endpoint is not None:
            tiers.require(tier, endpoint, granted.project.slug, model=choice.name)
        if self.models is None:
            return choice, self.engine
        return choice, await self.models.engine(choice)

    async def run(self, work: Callable[[Any], Any]) -> Any:
        """`work(session)` as one transaction in a worker thread (see `enclave.web.transactions`)."""
        return await in_transaction_thread(self.db, work)


async def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def get_engine(state: GatewayState = Depends(get_state)) -> Engine:
    return state.engine


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a request says about its caller: `Authorization` and `X-Enclave-Project`. Read from the
    request rather than declared as header parameters, which would change the published schema.
    `identified` hears the caller's name as soon as the token is known, so a refusal after that
    (no access, no quota) is counted against the person, not the token."""

    authorization: str | None
    project: str | None
    identified: Callable[[str], None] = lambda _username: None
    # The peer's address: a notebook container's, for a call from a notebook (uvicorn trusts
    # forwarding headers from loopback only, where no notebook is).
    address: str | None = None

    def decide(self, session, identity: HubIdentity) -> tuple[Caller, Access]:
        """The caller and the registry's decision, in the transaction of `session`. A call from a
        notebook session acts for that session's project only (`enclave.web.session_binding`)."""
        caller = identify(session, self.authorization, identity)
        self.identified(caller.username)
        project = session_project(session, caller.username, self.project, token=bearer_token(self.authorization),
                                  address=self.address)
        return caller, authorize(session, caller, project)


async def get_credentials(request: Request) -> Credentials:
    return Credentials(request.headers.get("authorization"), request.headers.get("x-enclave-project"),
                       lambda username: refusals.note_caller(request, username),
                       request.client.host if request.client else None)


async def get_access(state: GatewayState = Depends(get_state),
                     credentials: Credentials = Depends(get_credentials)) -> Access:
    """The registry's decision for this request's caller (raises Unauthenticated or AccessDenied)."""
    _, granted = await state.run(lambda session: credentials.decide(session, state.identity))
    return granted


class MeteredCall:
    """One request's model call: admit it (identify, authorise and reserve the worst case, in one
    transaction), run it until done or the client leaves, then settle the actual cost and record it.
    `outputs` of the run are what the caller is given (generated texts, or the rounded numbers of
    score and next-token), stored with the call and digested in its audit event."""

    def __init__(self, request: Request, state: GatewayState, credentials: Credentials,
                 decided: Access | None = None):
        self.request, self.state, self.credentials, self.decided = request, state, credentials, decided
        self.choice: Choice | None = None

    async def model(self, requested: str | None, endpoint: str) -> tuple[str, Engine]:
        """The name and engine of the model this call asked for (None: the default), if the
        project may use it now and its tier for that model includes `endpoint` (refused before
        any tokenising or loading); the admission asks the registry again, in its transaction."""
        self.choice, engine = await self.state.served(self.decided, requested, endpoint)
        return self.choice.name, engine

    async def __call__(self, endpoint: str, prompt: str, prompt_tokens: int, worst_case: int,
                       run: Callable[[Access], Awaitable[tuple[Any, Any, int]]],
                       completion_cap: int = 0, max_new_tokens: int | None = None,
                       produced: Callable[[], int] | None = None, activation_bytes: int = 0) -> tuple[str, Any, int]:
        """`run(granted)` gets the admitted access decision (its project keys seeded sampling) and
        returns (result, outputs, completion tokens); this returns (call id, result, completion
        tokens). `completion_cap` is the most the call may generate (all samples),
        `max_new_tokens` the most per sample (a one-token generation is probability-bearing).
        `produced()` says how many tokens the run has generated so far: a call whose client left
        is charged for them (and its prompt), not for nothing and not for its worst case.
        `activation_bytes` is what an activations call returns, charged against the day's budget."""
        identity = self.state.identity

        def admit(session):
            caller, granted = self.credentials.decide(session, identity)
            if self.choice is not None:
                # Decided again with the reservation, so a demotion since `model()` still bites.
                again = self.state.choose(session, granted, self.choice.name)
                if again.directory != self.choice.directory:
                    raise Conflict(f"model {self.choice.name!r} changed while the call was admitted: try again")
            ticket = quota.reserve(session, granted, endpoint, worst_case, completion_tokens=completion_cap,
                                   max_new_tokens=max_new_tokens, instance_id=self.state.instance_id,
                                   activation_bytes=activation_bytes,
                                   model=self.choice.name if self.choice is not None else None)
            return caller, granted, ticket

        caller, granted, ticket = await self.state.run(admit)
        started = time.perf_counter()
        status, outputs, completion = "error", [], 0
        try:
            result, outputs, completion = await _until_disconnect(self.request, run(granted))
            status = "ok"
            return ticket.id, result, completion
        except ClientGone:
            status = "cancelled"
            completion = produced() if produced is not None else 0
            raise
        except QueueFull:
            status = "busy"
            raise
        finally:
            charged = 0 if status == "busy" else prompt_tokens + completion
            record = quota.CallRecord(status=status, prompt=prompt, outputs=outputs, prompt_tokens=prompt_tokens,
                                      completion_tokens=completion,
                                      model=self.choice.name if self.choice is not None else None,
                                      latency_ms=int((time.perf_counter() - started) * 1000))
            # Settle even when the client left or the engine failed: the reservation must not linger.
            await asyncio.shield(self.state.run(lambda s: quota.settle(
                s, ticket, charged, record, actor=caller.username, project_slug=granted.project.slug)))


async def get_metered_call(request: Request, state: GatewayState = Depends(get_state),
                           credentials: Credentials = Depends(get_credentials)) -> MeteredCall:
    """A metered call for a caller already identified and authorised: the route's body (which
    tokenises the prompt) runs only for a caller the registry would admit right now."""
    _, decided = await state.run(lambda session: credentials.decide(session, state.identity))
    return MeteredCall(request, state, credentials, decided)


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it if the client goes away (the engine then frees its slots)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise ClientGone()
    except asyncio.CancelledError:
        task.cancel()
        raise
