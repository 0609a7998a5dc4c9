"""The privacy ledger in the registry: each project's budget is its grant's (epsilon, delta); every
spend is recorded with its audit event or not at all; concurrent charges never overspend, on SQLite
and PostgreSQL; spends survive a restart and cannot be edited; `enclave privacy show`."""

from __future__ import annotations

import contextlib
import io
import json
import threading

import pytest
from sqlalchemy import text
from sqlmodel import select

from enclave.errors import AccessDenied, BadInput, NotFound
from enclave.registry import access, audit, datasets, grants, privacy, projects
from enclave.registry.db import make_engine, session_scope
from enclave.registry.models import AuditEvent
from tests.conftest import OPERATOR
from tests.helpers import approved_project

SCHOLAR, LAB, OTHER = "sofia", "lab", "other"


@pytest.fixture
def ledger(engine, tmp_path):
    """LAB (sofia's) with a grant of epsilon 1.0, delta 1e-6 and the dataset `people`; OTHER
    without it."""
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("name,age\n" + "".join(f"p{i},{20 + i % 50}\n" for i in range(200)))
    approved_project(engine, LAB, SCHOLAR)
    approved_project(engine, OTHER, "bob")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, LAB, epsilon=1.0, delta=1e-6)
        grants.set_grant(s, OPERATOR, OTHER)
        datasets.register(s, OPERATOR, "people", str(csv_path), ["age"])
        datasets.allow(s, OPERATOR, "people", LAB)
    return engine


def _charge(engine, epsilon: float, delta: float = 0.0, slug: str = LAB, who: str = SCHOLAR):
    with session_scope(engine) as s:
        granted = access.resolve(s, who, slug)
        dataset = privacy.usable_dataset(s, granted.project, "people")
        return privacy.charge(s, granted, dataset, mechanism="diffprivlib.tools.mean",
                              query={"statistic": "mean", "column": "age", "bounds": [0, 100]},
                              epsilon=epsilon, delta=delta, result=42.0)


def _show(engine, slug: str = LAB) -> dict:
    with session_scope(engine) as s:
        return privacy.ledger_json(s, slug)


def test_a_spend_is_recorded_with_its_audit_event(ledger):
    spend = _charge(ledger, 0.25, 1e-7)
    shown = _show(ledger)
    assert shown["budget"] == {"epsilon": 1.0, "delta": 1e-6}
    assert shown["spent"]["epsilon"] == pytest.approx(0.25) and shown["spent"]["delta"] == pytest.approx(1e-7)
    assert shown["left"]["epsilon"] == pytest.approx(0.75) and shown["composition"] == "sequential"
    [row] = shown["ledger"]
    assert row["user"] == SCHOLAR and row["dataset"] == "people" and row["mechanism"] == "diffprivlib.tools.mean"
    assert row["query"]["column"] == "age" and row["epsilon"] == 0.25
    with session_scope(ledger) as s:
        event = s.exec(select(AuditEvent).where(AuditEvent.seq == spend.audit_seq)).one()
        assert event.action == "privacy.spend" and event.actor == SCHOLAR and event.subject == f"project:{LAB}"
        assert json.loads(event.details)["spend"] == spend.id
        assert audit.verify_database(s).ok


def test_sequential_composition_exhausts_exactly_and_refusals_charge_nothing(ledger):
    for _ in range(10):
        _charge(ledger, 0.1)  # ten spends of 0.1 fill a budget of 1.0 despite rounding
    with pytest.raises(privacy.BudgetExhausted, match="epsilon 0.01, and 0 of 1 is left"):
        _charge(ledger, 0.01)
    shown = _show(ledger)
    assert shown["spends"] == 10 and len(shown["ledger"]) == 10
    with session_scope(ledger) as s:
        assert len(s.exec(select(AuditEvent).where(AuditEvent.action == "privacy.spend")).all()) == 10


def test_delta_is_a_budget_too(ledger):
    _charge(ledger, 0.1, 6e-7)
    with pytest.raises(privacy.BudgetExhausted, match="delta"):
        _charge(ledger, 0.1, 6e-7)
    assert _show(ledger)["spends"] == 1


def test_a_project_that_may_not_use_the_dataset_is_refused_and_charged_nothing(ledger):
    with session_scope(ledger) as s:
        other = projects.get_project(s, OTHER)
        with pytest.raises(AccessDenied) as refused:
            privacy.usable_dataset(s, other, "people")
        assert refused.value.reason == "dataset_not_allowed"
        with pytest.raises(NotFound):
            privacy.usable_dataset(s, other, "no-such-dataset")
    # A dataset withdrawn while a query ran: the charge checks again and refuses.
    with session_scope(ledger) as s:
        granted = access.resolve(s, SCHOLAR, LAB)
        dataset = privacy.usable_dataset(s, granted.project, "people")
    with session_scope(ledger) as s:
        datasets.disallow(s, OPERATOR, "people", LAB)
    with session_scope(ledger) as s, pytest.raises(AccessDenied):
        privacy.charge(s, access.resolve(s, SCHOLAR, LAB), dataset, mechanism="m", query={}, epsilon=0.1, delta=0,
                       result=1)
    assert _show(ledger)["spends"] == 0


@pytest.mark.parametrize("epsilon, delta, rows, match", [
    (0, 0, 100, "epsilon must be a positive"), (-1, 0, 100, "epsilon must be a positive"),
    (float("nan"), 0, 100, "epsilon"), (float("inf"), 0, 100, "epsilon"), ("x", 0, 100, "numbers"),
    (0.1, -1e-9, 100, "delta must be zero"), (0.1, 0.01, 100, "below 1/n = 0.01"), (0.1, 1.0, 1, "below 1/n = 1"),
])
def test_bad_costs_are_refused(epsilon, delta, rows, match):
    with pytest.raises(BadInput, match=match):
        privacy.check_cost(epsilon, delta, rows)


def test_good_costs_pass():
    assert privacy.check_cost(0.5, 0.0099, 100) == (0.5, 0.0099)


def test_concurrent_charges_never_overspend(ledger):
    """Twelve scholars' queries at once against a budget that pays for three: exactly three are
    charged, on SQLite and PostgreSQL (each thread has its own connection and transaction)."""
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def one():
        start.wait()
        try:
            _charge(ledger, 0.3)
            result = "ok"
        except privacy.BudgetExhausted:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 9
    shown = _show(ledger)
    assert shown["spends"] == 3 and shown["spent"]["epsilon"] == pytest.approx(0.9)
    assert sum(r["epsilon"] for r in shown["ledger"]) == pytest.approx(0.9)


def test_spends_survive_a_restart_and_cannot_be_edited(ledger):
    _charge(ledger, 0.4)
    url = ledger.url.render_as_string(hide_password=False)
    ledger.dispose()
    fresh = make_engine(url)  # a new process's view: nothing was kept in memory
    try:
        shown = _show(fresh)
        assert shown["spends"] == 1 and shown["left"]["epsilon"] == pytest.approx(0.6)
        with pytest.raises(privacy.BudgetExhausted):
            _charge(fresh, 0.7)
        # The ledger is append-only: a spend can be neither changed nor removed, even by SQL.
        for statement in ("UPDATE privacy_spend SET epsilon = 0", "DELETE FROM privacy_spend"):
            with pytest.raises(Exception, match="append-only"):
                with fresh.begin() as conn:
                    conn.execute(text(statement))
        assert _show(fresh)["ledger"][0]["epsilon"] == 0.4
    finally:
        fresh.dispose()


def test_a_lowered_grant_leaves_nothing_but_keeps_the_record(ledger):
    _charge(ledger, 0.5)
    with session_scope(ledger) as s:
        grants.set_grant(s, OPERATOR, LAB, epsilon=0.3)
    shown = _show(ledger)
    assert shown["left"]["epsilon"] == 0 and shown["spent"]["epsilon"] == 0.5
    with pytest.raises(privacy.BudgetExhausted):
        _charge(ledger, 0.01)


def test_cli_privacy_show(ledger, monkeypatch, tmp_path):
    from enclave.cli import run

    _charge(ledger, 0.25)
    monkeypatch.setenv("ENCLAVE_DB_URL", ledger.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "home"))

    def enclave(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(list(args))
        return code, out.getvalue(), err.getvalue()

    code, out, _ = enclave("privacy", "show", LAB, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["project"] == LAB and shown["spent"]["epsilon"] == 0.25 and shown["ledger"][0]["user"] == SCHOLAR
    code, out, _ = enclave("privacy", "show", LAB)
    assert code == 0
    assert "budget: epsilon 1, delta 1e-06" in out and "left: epsilon 0.75" in out and "people" in out and "mean" in out
    code, _, err = enclave("privacy", "show", "nope")
    assert code == 2 and "unknown project 'nope'" in err
