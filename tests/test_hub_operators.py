"""Operators run the hub without holding anyone else's identity (issue 11: "no service or operator
can mint tokens that carry another person's review rights"; the two-person rule holds against one
insider). A hub admin could rename the reviewer `rita` away and take her name, or mint a token
for her, and the review UI would then take decisions as rita; so registry operators get the
`enclave-operators` role (admin page, see and stop servers) and never the hub's admin role, and
the `enclave-operator` service can neither rename, create nor mint.

Attacks from a real hub (developer mode) with the operator logged in through the login form, as
she would be, and with the operator service's token."""
from __future__ import annotations

import contextlib
import sqlite3

import httpx
import pytest

from enclave.registry import grants, people
from enclave.registry.credentials import set_password
from enclave.registry.db import session_scope
from tests.helpers import OPERATOR, approved_project
from tests.hub_stack import Browser, running_stack, spawn

PASSWORDS = {OPERATOR: "op-password-12345", "alice": "alice-password-1", "rita": "rita-password-1",
             "olive": "olive-password-1"}
# Scopes that let their holder act as someone else: never an operator's, never the service's.
IDENTITY_SCOPES = {"admin:users", "users", "tokens", "access:servers", "admin:auth_state", "admin:servers",
                   "admin:server_state", "admin:groups", "groups", "read:roles", "admin:services"}


@pytest.fixture
def registry(engine):
    approved_project(engine, "p1", "alice")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p1", session_hours=8)
        people.add_person(s, OPERATOR, "rita", "Rita", "rita@example.org", roles=["reviewer"])
        # Ravi is a reviewer who has never logged in: no hub user holds his name yet.
        people.add_person(s, OPERATOR, "ravi", "Ravi", "ravi@example.org", roles=["reviewer"])
        # Olive operates and reviews; she will stop operating.
        people.add_person(s, OPERATOR, "olive", "Olive", "olive@example.org", roles=["operator", "reviewer"])
        for name, password in PASSWORDS.items():
            set_password(s, OPERATOR, name, password)
    return engine


def _logged_in(stack, name: str) -> Browser:
    browser = Browser(stack)
    assert browser.login(name, PASSWORDS[name]).status_code == 302, stack.log()[-3000:]
    return browser


def _alices_server_status(browser: Browser) -> httpx.Response:
    """Open alice's notebook server as a browser does (a page that needs a login takes it through
    the hub's OAuth, which sets the server's cookie), then ask its API."""
    browser.client.get("/user/alice/files/nothing.txt")
    xsrf = browser.client.cookies.get("_xsrf", path="/user/alice/") or ""
    return browser.client.get("/user/alice/api/status", headers={"X-XSRFToken": xsrf})


def _hub_admins(tmp_path) -> list:
    with contextlib.closing(sqlite3.connect(tmp_path / "hub" / "jupyterhub.sqlite")) as hub_db:
        return hub_db.execute("SELECT name FROM users WHERE admin = 1 UNION SELECT users.name FROM users "
                              "JOIN user_role_map ON user_role_map.user_id = users.id JOIN roles "
                              "ON roles.id = user_role_map.role_id WHERE roles.name = 'admin'").fetchall()


def _whoami(stack, token: str) -> httpx.Response:
    return httpx.get(f"{stack.api}/user", headers={"Authorization": f"token {token}"}, timeout=30)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_operator_cannot_become_a_reviewer(tmp_path, db_url, registry):
    with running_stack(tmp_path, db_url, mode="unisolated", warden_interval=2) as stack:
        rita = _logged_in(stack, "rita")
        op = _logged_in(stack, OPERATOR)
        me = op.hub_api("GET", "/user").json()
        assert me["name"] == OPERATOR and not me["admin"], me
        assert {"admin-ui", "list:users", "delete:servers"} <= set(me["scopes"]), me["scopes"]
        assert not IDENTITY_SCOPES & set(me["scopes"]), me["scopes"]

        # Attack: mint a token for rita (the review UI would take it as rita's decision).
        assert op.hub_api("POST", "/users/rita/tokens", json={"note": "x"}).status_code == 403
        # Attack: rename rita away, or herself to a reviewer's name nobody holds yet.
        assert op.hub_api("PATCH", "/users/rita", json={"name": "rita-was-here"}).status_code == 403
        assert op.hub_api("PATCH", f"/users/{OPERATOR}", json={"name": "ravi"}).status_code == 403
        assert op.hub_api("POST", "/users/ravi").status_code == 403  # create ravi, then mint for him
        # Attack: make herself a hub admin, or give her own token more than she holds.
        assert op.hub_api("PATCH", f"/users/{OPERATOR}", json={"admin": True}).status_code == 403
        for scopes in (["admin:users"], ["tokens"], ["access:servers!user=rita"]):
            refused = op.hub_api("POST", f"/users/{OPERATOR}/tokens", json={"scopes": scopes})
            assert refused.status_code in (400, 403), (scopes, refused.status_code, refused.text)
        # The control: a token of her own she may have, and it is hers.
        own = op.hub_api("POST", f"/users/{OPERATOR}/tokens", json={"note": "own"})
        assert own.status_code == 201, own.text
        assert _whoami(stack, own.json()["token"]).json()["name"] == OPERATOR
        # Nothing changed: rita is still rita, and her session still works.
        assert stack.user_model("rita")["name"] == "rita" and stack.user_model(OPERATOR)["name"] == OPERATOR
        assert rita.logged_in() and rita.hub_api("GET", "/user").json()["name"] == "rita"

        # The operator service: the same attacks with its token.
        with stack.admin() as c:
            service_scopes = set(c.get("/user").json()["scopes"])
            assert not IDENTITY_SCOPES & service_scopes, service_scopes
            assert c.post("/users/rita/tokens", json={"note": "x"}).status_code == 403
            assert c.patch("/users/rita", json={"name": "rita-was-here"}).status_code == 403
            assert c.patch(f"/users/{OPERATOR}", json={"name": "ravi"}).status_code == 403
            assert c.patch(f"/users/{OPERATOR}", json={"admin": True}).status_code == 403
            assert c.post("/users/ravi").status_code == 403
        assert stack.user_model("rita")["name"] == "rita"

        # What an operator does need: the admin page, seeing servers and stopping them.
        page = op.client.get("/hub/admin")
        assert page.status_code == 200 and page.url.path == "/hub/admin", (page.status_code, page.url)
        alice = _logged_in(stack, "alice")
        assert spawn(stack, "alice", timeout=120, options={"project": "p1"}).get("ready")
        listed = {u["name"]: u for u in op.hub_api("GET", "/users").json()}
        assert listed["alice"]["servers"][""]["ready"], listed
        # ...but not getting into a scholar's notebook (the control: alice does, through the
        # hub's OAuth as a browser goes).
        assert "kernels" in _alices_server_status(alice).json()
        inside = _alices_server_status(op)
        assert inside.status_code == 403 and "kernels" not in inside.text, (inside.status_code, inside.text[:300])
        assert op.hub_api("DELETE", "/users/alice/server").status_code in (202, 204)
        stack.wait_stopped("alice", timeout=30)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_hub_admin_survives_a_restart(tmp_path, db_url, registry):
    """A hub database from a deployment where operators were hub admins (or edited by hand) keeps
    no admin; and an operator the registry demoted loses the operator role at her next request,
    even one made with a token she minted while she was an operator."""
    tokens = {}
    with running_stack(tmp_path, db_url, mode="unisolated") as stack:
        for name in (OPERATOR, "olive", "alice"):
            browser = _logged_in(stack, name)
            reply = browser.hub_api("POST", f"/users/{name}/tokens", json={"note": "kept"})
            assert reply.status_code == 201, reply.text
            tokens[name] = reply.json()["token"]
            browser.close()
    hub_db = sqlite3.connect(tmp_path / "hub" / "jupyterhub.sqlite")
    with hub_db:
        (admin_role,) = hub_db.execute("SELECT id FROM roles WHERE name = 'admin'").fetchone()
        for (user_id,) in hub_db.execute("SELECT id FROM users WHERE name IN (?, ?, ?)", (OPERATOR, "olive", "alice")):
            hub_db.execute("UPDATE users SET admin = 1 WHERE id = ?", (user_id,))
            hub_db.execute("INSERT OR IGNORE INTO user_role_map (user_id, role_id, managed_by_auth) VALUES (?, ?, 0)", (user_id, admin_role))
    hub_db.close()
    with session_scope(registry) as s:
        people.set_roles(s, OPERATOR, "olive", add=[], remove=["operator"])

    with running_stack(tmp_path, db_url, mode="unisolated") as stack:
        # At start, before anyone's next request: the hub's database holds no admin at all.
        assert _hub_admins(tmp_path) == [], _hub_admins(tmp_path)
        for name, token in tokens.items():
            me = _whoami(stack, token).json()
            assert me["name"] == name and not me["admin"], me
            assert not IDENTITY_SCOPES & set(me["scopes"]), (name, me["scopes"])
            minted = httpx.post(f"{stack.api}/users/rita/tokens", headers={"Authorization": f"token {token}"},
                                json={}, timeout=30)
            assert minted.status_code == 403, (name, minted.text)
        assert "admin-ui" in _whoami(stack, tokens[OPERATOR]).json()["scopes"]
        # Olive is no operator any more: no admin page, no list of users, no stopping servers.
        olive = _whoami(stack, tokens["olive"]).json()
        assert "admin-ui" not in olive["scopes"] and "list:users" not in olive["scopes"], olive["scopes"]
        listing = httpx.get(f"{stack.api}/users", headers={"Authorization": f"token {tokens['olive']}"}, timeout=30)
        assert listing.status_code == 403
