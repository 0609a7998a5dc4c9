"""The privacy ledger: each project's differential-privacy budget and what it has spent.

The budget is the project's grant (`Grant.epsilon`, `Grant.delta`; `enclave grant set P --epsilon
... --delta ...`). Spends compose **sequentially**: a project has spent the sum of the epsilons and
the sum of the deltas of every query it was answered (basic composition, Dwork & Roth 2014, thm
3.16). That is the loosest accountant, and the only one whose promise holds whatever mechanisms and
datasets the queries used; tighter accountants (advanced composition, RDP) can be added as a new
mode later without touching the recorded spends.

A charge is one transaction holding the project's lock (`SELECT ... FOR UPDATE` on its
`privacy_account` row on PostgreSQL; the write lock SQLite's `BEGIN IMMEDIATE` already gives): it
checks the access and the dataset again, checks that the charge fits what is left, and records the
spend, the totals and its audit event together. So any number of concurrent queries together can
never spend more than the grant allows, and a spend is either fully on the record or not at all.
The service computes a result first and charges it afterwards; it hands the result out only once
the charge has committed, so a query that fails (bad input, a computation error, an exhausted
budget, a crash) charges nothing and releases nothing.

Totals are compared with the budget with a relative slack of 1e-9, so that ten spends of 0.1
exhaust a budget of 1.0 exactly rather than failing on a rounding error.
"""

from __future__ import annotations

import dataclasses
import json
import datetime as dt
import math
import secrets
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, select

from enclave.errors import AccessDenied, BadInput, QuotaExhausted
from enclave.registry import audit
from enclave.registry.access import Access
from enclave.registry.clock import iso, utcnow
from enclave.registry.datasets import get_dataset
from enclave.registry.db import is_postgres
from enclave.registry.models import (
    Dataset, DatasetAccess, Grant, Person, PrivacyAccount, PrivacySpend, Project,
)
from enclave.registry.projects import get_project

COMPOSITION = "sequential"
ROUNDING_SLACK = 1e-9


class BudgetExhausted(QuotaExhausted):
    """The query would take the project past its grant's epsilon or delta (HTTP 402)."""

    code = "privacy_budget_exhausted"


@dataclasses.dataclass(frozen=True)
class Budget:
    epsilon: float
    delta: float
    epsilon_spent: float
    delta_spent: float
    spends: int

    @property
    def epsilon_left(self) -> float:
        return _left(self.epsilon, self.epsilon_spent)

    @property
    def delta_left(self) -> float:
        return _left(self.delta, self.delta_spent)

    def refuses(self, epsilon: float, delta: float) -> str | None:
        """Why a charge of (epsilon, delta) does not fit, or None."""
        if _over(self.epsilon_spent, epsilon, self.epsilon):
            return (f"privacy budget exhausted: this query needs epsilon {epsilon:g}, and {self.epsilon_left:g} of "
                    f"{self.epsilon:g} is left")
        if _over(self.delta_spent, delta, self.delta):
            return (f"privacy budget exhausted: this query needs delta {delta:g}, and {self.delta_left:g} of "
                    f"{self.delta:g} is left")
        return None


def _over(spent: float, cost: float, budget: float) -> bool:
    return spent + cost > budget * (1 + ROUNDING_SLACK)


def _left(budget: float, spent: float) -> float:
    left = budget - spent
    return 0.0 if left <= budget * ROUNDING_SLACK else left


def check_cost(epsilon: Any, delta: Any, rows: int) -> tuple[float, float]:
    """(epsilon, delta) as floats if they are a cost a query may have: epsilon > 0, and 0 <= delta
    < 1/n for a dataset of n rows (a larger delta allows mechanisms that publish whole records)."""
    try:
        eps, dlt = float(epsilon), float(delta)
    except (TypeError, ValueError):
        raise BadInput("epsilon and delta must be numbers") from None
    if not math.isfinite(eps) or eps <= 0:
        raise BadInput(f"epsilon must be a positive number, not {epsilon!r}")
    if not math.isfinite(dlt) or dlt < 0:
        raise BadInput(f"delta must be zero or a small positive number, not {delta!r}")
    bound = 1.0 / max(rows, 1)
    if dlt >= bound:
        raise BadInput(f"delta must be below 1/n = {bound:g} for this dataset of {rows} rows, not {dlt:g}")
    return eps, dlt


def usable_dataset(session: Session, project: Project, name: str) -> Dataset:
    """The registered dataset `name`, if `project` may use it: NotFound for an unknown one,
    AccessDenied (`dataset_not_allowed`) for one the project was not given."""
    dataset = get_dataset(session, name)
    if session.get(DatasetAccess, (dataset.id, project.id)) is None:
        raise AccessDenied(f"project {project.slug!r} may not use dataset {name!r}", "dataset_not_allowed")
    return dataset


def budget(session: Session, project: Project) -> Budget:
    """The project's budget (its grant's; none without a grant) and what it has spent."""
    grant = session.get(Grant, project.id)
    account = session.get(PrivacyAccount, project.id)
    return Budget(epsilon=grant.epsilon if grant else 0.0, delta=grant.delta if grant else 0.0,
                  epsilon_spent=account.epsilon_spent if account else 0.0,
                  delta_spent=account.delta_spent if account else 0.0, spends=account.spends if account else 0)


def check_affordable(session: Session, project: Project, epsilon: float, delta: float) -> None:
    """Refuse a query the budget cannot pay for before it is computed (the charge checks again
    under the lock; this only saves the work)."""
    reason = budget(session, project).refuses(epsilon, delta)
    if reason:
        raise BudgetExhausted(reason)


def _lock_account(session: Session, project_id: int) -> PrivacyAccount:
    """The project's account row, locked until the transaction ends."""
    if is_postgres(session):
        session.execute(text("INSERT INTO privacy_account (project_id, epsilon_spent, delta_spent, spends, updated_at) "
                             "VALUES (:p, 0, 0, 0, now()) ON CONFLICT DO NOTHING"), {"p": project_id})
        return session.exec(select(PrivacyAccount).where(PrivacyAccount.project_id == project_id)
                            .with_for_update().execution_options(populate_existing=True)).one()
    # SQLite: BEGIN IMMEDIATE already gave this transaction the database's only write lock.
    account = session.get(PrivacyAccount, project_id, populate_existing=True)
    if account is None:
        account = PrivacyAccount(project_id=project_id)
        session.add(account)
        session.flush()
    return account


def charge(session: Session, granted: Access, dataset: Dataset, *, mechanism: str, query: dict[str, Any],
           epsilon: float, delta: float, result: Any, now: dt.datetime | None = None) -> PrivacySpend:
    """Record one answered query against the project's budget, with its audit event, or refuse it
    (BudgetExhausted, AccessDenied for a dataset withdrawn meanwhile). `granted` must come from
    `access.resolve` in this same transaction."""
    now = now or utcnow()
    project = granted.project
    account = _lock_account(session, project.id)
    usable_dataset(session, project, dataset.name)  # withdrawn while the query ran: nothing is charged
    grant = session.get(Grant, project.id, populate_existing=True)
    current = Budget(epsilon=grant.epsilon, delta=grant.delta, epsilon_spent=account.epsilon_spent,
                     delta_spent=account.delta_spent, spends=account.spends)
    reason = current.refuses(epsilon, delta)
    if reason:
        raise BudgetExhausted(reason)
    spend_id = secrets.token_hex(12)
    query_json = audit.canonical_json(query)
    result_json = audit.canonical_json(result)
    details = {"spend": spend_id, "dataset": dataset.name, "mechanism": mechanism, "query": query,
               "epsilon": epsilon, "delta": delta, "result_sha256": audit.sha256_text(result_json)}
    event = audit.append(session, actor=granted.person.username, action="privacy.spend",
                         subject=f"project:{project.slug}", details=details)
    account.epsilon_spent += epsilon
    account.delta_spent += delta
    account.spends += 1
    account.updated_at = now
    spend = PrivacySpend(id=spend_id, project_id=project.id, person_id=granted.person.id, dataset_id=dataset.id,
                         dataset=dataset.name, mechanism=mechanism, query=query_json, epsilon=epsilon, delta=delta,
                         result=result_json, created_at=now, audit_seq=event.seq)
    session.add_all([account, spend])
    session.flush()
    return spend


def spends_of(session: Session, project: Project) -> list[PrivacySpend]:
    return list(session.exec(select(PrivacySpend).where(PrivacySpend.project_id == project.id)
                             .order_by(PrivacySpend.created_at, PrivacySpend.id)).all())


def spend_json(session: Session, spend: PrivacySpend) -> dict[str, Any]:
    person = session.get(Person, spend.person_id)
    return {"id": spend.id, "time": iso(spend.created_at), "user": person.username if person else None,
            "dataset": spend.dataset, "mechanism": spend.mechanism, "query": json.loads(spend.query),
            "epsilon": spend.epsilon, "delta": spend.delta, "audit_seq": spend.audit_seq}


def budget_json(current: Budget) -> dict[str, Any]:
    return {"composition": COMPOSITION,
            "budget": {"epsilon": current.epsilon, "delta": current.delta},
            "spent": {"epsilon": current.epsilon_spent, "delta": current.delta_spent},
            "left": {"epsilon": current.epsilon_left, "delta": current.delta_left},
            "spends": current.spends}


def ledger_json(session: Session, slug: str) -> dict[str, Any]:
    """`enclave privacy show SLUG --json`: budget, spent, left and every spend, oldest first."""
    project = get_project(session, slug)
    return {"project": project.slug, **budget_json(budget(session, project)),
            "ledger": [spend_json(session, s) for s in spends_of(session, project)]}
