"""Who may log in to the hub: the registry decides, whatever proves the identity.

`EnclaveAdmission` is a mixin for any JupyterHub authenticator: the upstream class (OAuth, LDAP,
...) proves who someone is; the mixin admits only registry people with a login role, gives operators
the `enclave-operators` role (never the hub's admin role), and re-checks at every refresh so that
a person removed from the registry, or no longer an operator, loses what they lost within
`auth_refresh_age`. `EnclavePasswordAuthenticator` is the embedded setup's
identity: passwords set by operators (`enclave person password`), stored as scrypt hashes.

Plugging an upstream authenticator in, in jupyterhub_config.py:

    from oauthenticator.generic import GenericOAuthenticator
    from enclave.hub.authenticator import EnclaveAdmission
    class EnclaveOAuthenticator(EnclaveAdmission, GenericOAuthenticator): pass
    c.JupyterHub.authenticator_class = EnclaveOAuthenticator
"""
from __future__ import annotations

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Set, default

from enclave.hub.admission import LOGIN_ROLES, login_decision
from enclave.hub.registry_link import RegistryLink
from enclave.registry import audit
from enclave.registry.credentials import check_password

ACTOR = "system"

# What registry operators hold in the hub: the admin page, who is logged in and what runs, and
# stopping a server. Not the hub's `admin` role (it cannot be narrowed): its `admin:users` renames
# users, so an admin could rename a reviewer away and take her name, and its `tokens` mints tokens
# as anyone; either way the review UI would take the admin's decision as the reviewer's. Nor
# `access:servers` (a scholar's notebook holds project data) or `admin:auth_state`.
OPERATOR_ROLE = {
    "name": "enclave-operators",
    "description": "Registry operators: the admin page, listing users and servers, stopping servers.",
    "scopes": ["admin-ui", "list:users", "read:users", "read:servers", "delete:servers"],
}
# Everyone the registry admits holds this default role (`self`, the services; see config.py).
USER_ROLE = "user"


def hub_roles(operator: bool) -> list[dict]:
    """The hub roles a person the registry admitted holds, and no others."""
    # Copies: JupyterHub marks the dicts it is given.
    operator_role = {**OPERATOR_ROLE, "scopes": list(OPERATOR_ROLE["scopes"])}
    return [{"name": USER_ROLE}, *([operator_role] if operator else [])]


class EnclaveAdmission(RegistryLink):
    login_roles = Set(
        default_value=set(LOGIN_ROLES),
        help="Registry roles that may log in to the hub. A person holding none of them is refused.",
    ).tag(config=True)

    # The registry is the allow list: JupyterHub's own `allowed_users` would keep admitting a person
    # the registry removed (allow_existing_users), so admission never consults it.
    @default("allow_all")
    def _default_allow_all(self):
        return False

    @default("any_allow_config")
    def _default_any_allow_config(self):
        return True  # check_allowed (the registry) is the allow configuration

    @default("auth_refresh_age")
    def _default_auth_refresh_age(self):
        return 60

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self):
        return True

    # The registry says who holds which hub role, at every login and refresh: a role given by
    # hand (or left in the hub's database by an older deployment) goes at the next refresh.
    @default("manage_roles")
    def _default_manage_roles(self):
        return True

    async def _decide(self, username: str):
        return await self.in_registry(lambda s: login_decision(s, username, frozenset(self.login_roles)))

    async def record(self, action: str, username: str, handler=None, **details) -> None:
        """Put a login (or a failed one) on the registry's audit chain."""
        address = getattr(getattr(handler, "request", None), "remote_ip", None)
        await self.in_registry(lambda s: audit.append(
            s, actor=ACTOR, action=action, subject=f"person:{username[:64]}",
            details={"user": username[:64], **({"address": address} if address else {}), **details}))

    async def check_allowed(self, username, authentication=None):
        decision = await self._decide(username)
        if not decision.allowed:
            self.log.warning("enclave: refused login of %s: %s", username, decision.reason)
            await self.record("hub.login_failed", username, reason=decision.reason)
            raise web.HTTPError(403, decision.reason)
        return True

    def is_admin(self, handler, authentication):
        return False  # nobody: see OPERATOR_ROLE

    def _grant(self, username: str, operator: bool) -> dict:
        return {"name": username, "admin": False, "roles": hub_roles(operator)}

    async def refresh_user(self, user, handler=None):
        decision = await self._decide(user.name)
        if not decision.allowed:
            self.log.warning("enclave: %s no longer admitted: %s", user.name, decision.reason)
            return False  # forces a new login, which check_allowed then refuses
        held = {role.name for role in user.roles}
        if user.admin or held != {role["name"] for role in hub_roles(decision.admin)}:
            return self._grant(user.name, decision.admin)  # decision.admin: holds the operator role
        return True

    async def get_authenticated_user(self, handler, data):
        authenticated = await super().get_authenticated_user(handler, data)
        if authenticated is not None:
            decision = await self._decide(authenticated["name"])
            authenticated.update(self._grant(authenticated["name"], decision.admin))
            await self.record("hub.login", authenticated["name"], handler)
        return authenticated


class EnclavePasswordAuthenticator(EnclaveAdmission, Authenticator):
    """Log in with a password an operator set in the registry."""

    async def authenticate(self, handler, data):
        username = self.normalize_username((data or {}).get("username", "") or "")
        password = (data or {}).get("password", "") or ""
        if not username or not password:
            return None
        ok = await self.in_registry(lambda s: check_password(s, username, password))
        if not ok:
            self.log.warning("enclave: failed login for %s", username)
            await self.record("hub.login_failed", username, handler, reason="wrong user name or password")
            return None
        return {"name": username}
