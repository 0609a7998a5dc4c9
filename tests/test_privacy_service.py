"""The privacy service over HTTP: each DP statistic from a registered dataset, charged to the
project's ledger and answered with a signed receipt; bad input (no bounds, epsilon <= 0, delta >=
1/n, unknown dataset or column, a dataset the project may not use, an exhausted budget) is a clear
error and charges nothing; a notebook session acts for its own project only."""

from __future__ import annotations

import copy
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from enclave.errors import BadInput, Unauthenticated
from enclave.privacy import receipts
from enclave.privacy.app import create_app
from enclave.privacy.settings import PrivacySettings
from enclave.registry import datasets, grants, privacy, projects, sessions
from enclave.registry.db import session_scope
from tests.conftest import OPERATOR
from tests.helpers import approved_project

SCHOLAR, LAB, OTHER = "sofia", "lab", "other"
TOKENS = {"tok-sofia": SCHOLAR, "tok-session": SCHOLAR, "tok-bob": "bob"}
ROWS = 200
P = "/services/privacy"


class FakeIdentity:
    """Tokens -> user names, standing in for the hub (HubIdentity is tested with a real hub
    elsewhere; here the registry and the ledger are what is under test)."""

    def username(self, token: str) -> str:
        if token not in TOKENS:
            raise Unauthenticated("JupyterHub does not recognise this token")
        return TOKENS[token]


@pytest.fixture
def web(engine, tmp_path):
    people_csv = tmp_path / "people.csv"
    people_csv.write_text("name,age,region,income\n" + "".join(
        f"p{i},{20 + i % 50},{'north' if i % 2 else 'south'},{1000 * (i % 7) if i % 10 else 'n/a'}\n"
        for i in range(ROWS)))
    secret_csv = tmp_path / "secret.csv"
    secret_csv.write_text("name,salary\na,1\nb,2\n")
    approved_project(engine, LAB, SCHOLAR)
    approved_project(engine, OTHER, "bob")
    with session_scope(engine) as s:
        projects.add_member(s, OPERATOR, OTHER, SCHOLAR)  # she works in both
        grants.set_grant(s, OPERATOR, LAB, epsilon=1.0, delta=1e-3)
        grants.set_grant(s, OPERATOR, OTHER, epsilon=1.0, delta=1e-3)
        datasets.register(s, OPERATOR, "people", str(people_csv), ["age", "region"])
        datasets.register(s, OPERATOR, "secret", str(secret_csv), [])
        datasets.allow(s, OPERATOR, "people", LAB)
        datasets.allow(s, OPERATOR, "secret", OTHER)
    settings = PrivacySettings.for_home(tmp_path / "home", engine.url.render_as_string(hide_password=False))
    with TestClient(create_app(settings, identity=FakeIdentity()), raise_server_exceptions=False) as client:
        client.engine = engine
        yield client


def ask(web, statistic: str, token: str = "tok-sofia", project: str | None = LAB, **body):
    headers = {"Authorization": f"token {token}"}
    if project:
        headers["X-Enclave-Project"] = project
    return web.post(f"{P}/api/dp/{statistic}", json={"dataset": "people", **body}, headers=headers)


def spent(web, slug: str = LAB) -> dict:
    with session_scope(web.engine) as s:
        return privacy.ledger_json(s, slug)


def published_key(web):
    reply = web.get(f"{P}/api/receipt-key")
    assert reply.status_code == 200
    key = serialization.load_pem_public_key(reply.text.encode())
    assert reply.headers["X-Key-Id"] == receipts.key_id(key)
    return key


@pytest.mark.parametrize("statistic, body, check", [
    ("count", {}, lambda v: isinstance(v, int) and 150 <= v <= 250),
    ("count", {"column": "income", "delta": 1e-4}, lambda v: isinstance(v, int) and 120 <= v <= 240),
    ("sum", {"column": "age", "bounds": [0, 100]}, lambda v: 5000 < v < 12000),
    ("mean", {"column": "age", "bounds": [0, 100], "where": {"region": "north"}}, lambda v: 0 <= v <= 100),
    ("var", {"column": "age", "bounds": [0, 100]}, lambda v: 0 <= v <= 2500),
    ("histogram", {"column": "age", "bounds": [0, 100], "bins": 5},
     lambda v: len(v["counts"]) == 5 and len(v["edges"]) == 6 and v["edges"][0] == 0 and v["edges"][-1] == 100),
    ("quantile", {"column": "age", "bounds": [0, 100], "quantile": 0.5, "where": {"age": {"ge": 20, "lt": 70}}},
     lambda v: 0 <= v <= 100),
])
def test_each_statistic_is_answered_charged_and_receipted(web, statistic, body, check):
    reply = ask(web, statistic, epsilon=0.5, **body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert check(answer["value"]), answer["value"]
    # The receipt verifies against the published key and says what was released, at what cost.
    receipt = receipts.verify(answer["receipt"], published_key(web))
    assert receipt["value"] == answer["value"] and receipt["epsilon"] == 0.5
    assert receipt["delta"] == body.get("delta", 0.0)
    assert receipt["query"]["statistic"] == statistic and receipt["dataset"] == "people" and receipt["project"] == LAB
    assert receipt["mechanism"].startswith("diffprivlib.")
    ledger = spent(web)
    assert ledger["spends"] == 1 and ledger["spent"]["epsilon"] == 0.5
    assert ledger["ledger"][0]["id"] == receipt["spend"] and ledger["ledger"][0]["user"] == SCHOLAR
    assert answer["budget"]["left"]["epsilon"] == 0.5


def test_a_tampered_receipt_does_not_verify(web):
    answer = ask(web, "mean", epsilon=0.2, column="age", bounds=[0, 100]).json()
    key = published_key(web)
    forged = copy.deepcopy(answer["receipt"])
    forged["receipt"]["epsilon"] = 100.0  # claims a less private... or any other change
    with pytest.raises(BadInput, match="does not verify"):
        receipts.verify(forged, key)
    forged = copy.deepcopy(answer["receipt"])
    forged["receipt"]["value"] = 3.0
    with pytest.raises(BadInput, match="does not verify"):
        receipts.verify(forged, key)


@pytest.mark.parametrize("statistic, body, status, code, words", [
    ("mean", {"column": "age", "epsilon": 0.5}, 400, "bad_request", "needs bounds"),
    ("quantile", {"column": "age", "epsilon": 0.5}, 400, "bad_request", "needs bounds"),
    ("histogram", {"column": "age", "epsilon": 0.5}, 400, "bad_request", "needs bounds"),
    ("sum", {"column": "age", "epsilon": 0.5}, 400, "bad_request", "needs bounds"),
    ("mean", {"column": "age", "epsilon": 0, "bounds": [0, 100]}, 400, "bad_request", "epsilon must be a positive"),
    ("count", {"epsilon": -1}, 400, "bad_request", "epsilon must be a positive"),
    ("count", {}, 400, "bad_request", "epsilon=..."),
    ("count", {"epsilon": 0.1, "delta": 1 / ROWS}, 400, "bad_request", "below 1/n"),
    ("mean", {"column": "age", "epsilon": 0.1, "delta": 1e-6, "bounds": [0, 100]}, 400, "bad_request", "delta at 0"),
    ("mean", {"column": "age", "epsilon": 0.1, "bounds": [100, 0]}, 400, "bad_request", "below the upper"),
    ("mean", {"dataset": "nope", "column": "age", "epsilon": 0.1, "bounds": [0, 1]}, 404, "not_found", "unknown dataset"),
    ("mean", {"column": "shoe_size", "epsilon": 0.1, "bounds": [0, 1]}, 404, "not_found", "no column 'shoe_size'"),
    ("count", {"epsilon": 0.1, "where": {"shoe_size": 3}}, 404, "not_found", "no column 'shoe_size'"),
    ("mean", {"dataset": "secret", "column": "salary", "epsilon": 0.1, "bounds": [0, 9]}, 403, "dataset_not_allowed",
     "may not use dataset 'secret'"),
    ("median", {"column": "age", "epsilon": 0.1}, 404, "not_found", "unknown statistic"),
    ("count", {"epsilon": 0.1, "bogus": 1}, 400, "bad_request", "unknown field 'bogus'"),
])
def test_bad_input_is_a_clear_error_and_charges_nothing(web, statistic, body, status, code, words):
    reply = ask(web, statistic, **body)
    assert reply.status_code == status and reply.json()["error"] == code, reply.text
    assert words in reply.json()["message"]
    assert spent(web)["spends"] == 0 and spent(web, OTHER)["spends"] == 0


def test_an_exhausted_budget_refuses_and_charges_nothing(web):
    assert ask(web, "count", epsilon=0.6).status_code == 200
    refused = ask(web, "count", epsilon=0.6)
    assert refused.status_code == 402 and refused.json()["error"] == "privacy_budget_exhausted", refused.text
    assert "0.4 of 1 is left" in refused.json()["message"]
    assert ask(web, "count", epsilon=0.4).status_code == 200  # what is left can still be spent
    ledger = spent(web)
    assert ledger["spends"] == 2 and ledger["left"]["epsilon"] == 0


def test_a_dataset_changed_on_disk_is_refused_and_charges_nothing(web):
    with session_scope(web.engine) as s:
        path = datasets.get_dataset(s, "people").path
    with open(path, "a") as handle:
        handle.write("intruder,99,north,1\n")  # the receipt would name the registered version
    reply = ask(web, "count", epsilon=0.1)
    assert reply.status_code == 503 and "changed since it was registered" in reply.json()["message"]
    assert spent(web)["spends"] == 0


def test_an_empty_selection_is_answered_not_an_error(web):
    # An error only some data causes would leak for free (nothing is charged for errors).
    reply = ask(web, "mean", epsilon=0.1, column="age", bounds=[0, 100], where={"region": "nowhere"})
    assert reply.status_code == 200 and 0 <= reply.json()["value"] <= 100
    assert spent(web)["spends"] == 1


def test_unauthenticated_and_unregistered_callers_are_refused(web):
    assert web.post(f"{P}/api/dp/count", json={"dataset": "people", "epsilon": 0.1}).status_code == 401
    assert ask(web, "count", token="tok-nobody", epsilon=0.1).status_code == 401
    assert ask(web, "count", token="tok-bob", epsilon=0.1).status_code == 403  # bob is not in LAB
    assert spent(web)["spends"] == 0


def test_a_notebook_session_acts_for_its_own_project_only(web):
    """Sofia's session works for OTHER; from it (its token, or another token from its address)
    she cannot spend LAB's budget on LAB's dataset, and the session's project may not use it."""
    with session_scope(web.engine) as s:
        sessions.open_session(s, username=SCHOLAR, project=OTHER, mode="docker", container_ip="testclient",
                              token_sha256=hashlib.sha256(b"tok-session").hexdigest())
    for token in ("tok-session", "tok-sofia"):
        refused = ask(web, "count", token=token, project=LAB, epsilon=0.1)
        assert refused.status_code == 403 and refused.json()["error"] == "wrong_project", refused.text
        unnamed = ask(web, "count", token=token, project=None, epsilon=0.1)
        assert unnamed.status_code == 403 and unnamed.json()["error"] == "dataset_not_allowed", unnamed.text
    assert spent(web)["spends"] == 0 and spent(web, OTHER)["spends"] == 0
    # Her session's own project and dataset are fine.
    reply = ask(web, "count", token="tok-session", project=None, epsilon=0.1, dataset="secret")
    assert reply.status_code == 200 and reply.json()["receipt"]["receipt"]["project"] == OTHER
    assert spent(web, OTHER)["spends"] == 1 and spent(web)["spends"] == 0


def test_the_budget_endpoint_shows_the_callers_project(web):
    ask(web, "count", epsilon=0.25)
    reply = web.get(f"{P}/api/budget", headers={"Authorization": "token tok-sofia", "X-Enclave-Project": LAB})
    assert reply.status_code == 200
    body = reply.json()
    assert body["project"] == LAB and body["spent"]["epsilon"] == 0.25 and len(body["ledger"]) == 1
    # Direct calls without the hub's prefix are routed too (a notebook calling the service itself).
    assert web.get("/api/budget", headers={"Authorization": "token tok-sofia", "X-Enclave-Project": LAB}).status_code == 200


def test_the_client_speaks_to_the_service(web, monkeypatch):
    """enclave.client.dp over real HTTP framing (the TestClient's transport)."""
    import httpx

    from enclave.client import Config, EnclaveError, dp

    def request(method, url, timeout=None, **kwargs):  # the TestClient takes no timeout
        return web.request(method, url.replace("http://privacy", ""), **kwargs)

    monkeypatch.setattr(httpx, "request", request)
    monkeypatch.setenv("ENCLAVE_PRIVACY_URL", f"http://privacy{P}")
    config = Config(token="tok-sofia", project=LAB)
    result = dp.mean("people", "age", epsilon=0.3, bounds=(0, 100), config=config)
    assert 0 <= result["value"] <= 100 and result["receipt"]["format"] == receipts.FORMAT
    with pytest.raises(EnclaveError, match="needs bounds") as refused:
        dp.mean("people", "age", epsilon=0.3, bounds=None, config=config)
    assert refused.value.status == 400
    assert dp.budget(config=config)["spent"]["epsilon"] == 0.3


def test_the_hub_runs_the_privacy_service_for_notebooks():
    """Wiring: with a command, the hub manages a `privacy` service on its port; scholars' role and
    notebook tokens may call it (and only with that scope does HubIdentity accept a token); the
    notebook gets its URL."""
    from traitlets.config import Config

    from enclave.hub.config import EnclaveHubSettings, configure
    from enclave.hub.spawner import SERVER_TOKEN_SCOPES
    from enclave.web.hub_auth import service_scopes

    assert "access:services!service=privacy" in SERVER_TOKEN_SCOPES
    assert service_scopes("privacy") & set(SERVER_TOKEN_SCOPES)
    off = Config()
    configure(off, EnclaveHubSettings(environ={}, mode="unisolated"))
    assert "privacy" not in [s["name"] for s in off.JupyterHub.services] and not off.EnclaveLocalSpawner.privacy_url
    c = Config()
    settings = EnclaveHubSettings(environ={"ENCLAVE_PRIVACY_PORT": "18004"}, mode="unisolated",
                                  privacy_command="enclave serve privacy --port 18004")
    configure(c, settings)
    [service] = [s for s in c.JupyterHub.services if s["name"] == "privacy"]
    assert service["url"].endswith(":18004") and "privacy" in service["command"]
    [user] = [r for r in c.JupyterHub.load_roles if r["name"] == "user"]
    assert "access:services!service=privacy" in user["scopes"]
    assert c.EnclaveLocalSpawner.privacy_url == service["url"]
