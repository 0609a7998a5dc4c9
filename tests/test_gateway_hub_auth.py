"""Scholars in notebooks call the gateway with their JupyterHub token. The gateway asks a real hub
who the token belongs to and accepts it only with an explicit gateway scope; the registry then
decides, on every request."""

from __future__ import annotations

import httpx

from enclave.registry import people, projects
from enclave.registry.db import make_engine, session_scope, upgrade

from tests.gateway_fixtures import OPERATOR, PROJECT, SCHOLAR, serve, tiny_model_dir  # noqa: F401  (fixture)
from tests.hub_fixtures import running_hub


def _call(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/generate", json={"prompt": "hello", "max_new_tokens": 3},
                      headers={"Authorization": f"token {token}"}, timeout=30)


def test_hub_tokens_are_resolved_scoped_and_reauthorised(tiny_model_dir, tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
        people.add_person(s, OPERATOR, "outsider", "Out Sider", "out@example.org")
    with running_hub(tmp_path / "hub", {"gateway": "http://127.0.0.1:1"}) as hub:
        with serve(db, tiny_model_dir, hub_api_url=hub.api_url) as gw:
            for user in (SCHOLAR, "outsider", "stranger"):
                hub.add_user(user)
            scoped = hub.token(SCHOLAR, ["access:services!service=gateway"])
            unscoped = hub.token(SCHOLAR, ["read:users:name!user"])
            other_service = hub.token(SCHOLAR, ["access:servers!user"])

            ok = _call(gw.url, scoped)
            assert ok.status_code == 200, ok.text
            for token in (unscoped, other_service):
                refused = _call(gw.url, token)
                assert refused.status_code == 401 and "scope" in refused.json()["message"]
            forged = _call(gw.url, "f" * 32)
            assert forged.status_code == 401 and "does not recognise" in forged.json()["message"]
            # Known to the hub, but not a member of any project / not in the registry at all.
            outsider = _call(gw.url, hub.token("outsider", ["access:services!service=gateway"]))
            assert (outsider.status_code, outsider.json()["error"]) == (403, "no_project")
            stranger = _call(gw.url, hub.token("stranger", ["access:services!service=gateway"]))
            assert (stranger.status_code, stranger.json()["error"]) == (403, "unknown_user")
            # The hub's answer is cached briefly; the registry's is not: revocation bites at once.
            with session_scope(db) as s:
                projects.transition(s, OPERATOR, PROJECT, "revoke", reason="breach")
            revoked = _call(gw.url, scoped)
            assert (revoked.status_code, revoked.json()["error"]) == (403, "revoked")
