"""The default authorization: [permissions] names services and the roles that may call them (step 12).

Apps are in process (``users_app``, ``login``: the auth plugin's fixtures) on
mem://; tests/test_accounts.py runs the same checks on every driver.
"""

from __future__ import annotations

import pytest
from bastion_permissions import Permissions, read

from kernel import (
    Config,
    ConfigError,
    Forbidden,
    NotFound,
    Unauthorized,
    current,
    hookimpl,
    service,
)
from kernel.testing import Client, response_mac

PASSWORD = "correct horse battery"
USERS = {"alice@localhost": PASSWORD, "bob@localhost": PASSWORD, "carol@localhost": PASSWORD}


@service
def publish(text: str) -> dict:
    """Needs the editor or the admin role."""
    return {"published": text, "by": current().user}


@service
def purge() -> str:
    """Needs the admin role."""
    return "purged"


@service
def read_news() -> list:
    """Open to every authenticated user; says which roles the caller has."""
    return sorted(current().roles)


class NewsPlugin:
    @hookimpl
    def bastion_services(self):
        return [publish, purge, read_news]


RULES = {"publish": "editor, admin", "purge": "admin"}
ROLES = {"alice@localhost": "editor", "bob@localhost": "admin, auditor"}


@pytest.fixture
def app(users_app):
    return users_app(USERS, sections={"permissions": RULES, "roles": ROLES}, plugins=[NewsPlugin()],
                     only=["storage_mem", "auth", "permissions"])


def test_a_listed_service_is_open_only_to_the_roles_it_names(app, login):
    alice, bob, carol = login("alice"), login("bob"), login("carol")
    assert alice.call("publish", "hello") == {"published": "hello", "by": "alice"}
    assert bob.call("publish", "hi") == {"published": "hi", "by": "bob"}
    assert bob.call("purge") == "purged"
    for client, name, args in ((alice, "purge", ()), (carol, "publish", ("x",)), (carol, "purge", ())):
        with pytest.raises(Forbidden):
            client.call(name, *args)


def test_a_service_not_listed_is_open_to_every_authenticated_user(app, login):
    assert login("carol").call("read_news") == []
    assert login("bob").call("read_news") == ["admin", "auditor"]
    assert login("alice").call("read_news") == ["editor"]


def test_forbidden_is_signed_and_comes_after_authentication_and_before_the_service_lookup(app, login):
    carol = login("carol")
    answer, nonce = carol.send_signed("/api/purge", b"")
    assert (answer.status, answer.json()["exc"]) == (403, "Forbidden")
    mac = response_mac(carol.session.key, nonce, 403, answer.body)
    assert answer.headers["server-authorization"] == f'Bastion-HMAC mac="{mac}"'
    # Before authentication nothing is told: no header is 401, whatever the service.
    anonymous = Client(app=app, host="localhost", clock=app.runtime.clock)
    assert anonymous.request("/api/purge", b"").json()["exc"] == Unauthorized.__name__
    # An unknown service is not listed (it cannot be), so it is open, and then not found (step 13).
    with pytest.raises(NotFound):
        carol.call("no_such_service")


def test_a_change_of_roles_counts_from_the_next_call(app, login):
    carol = login("carol")
    with pytest.raises(Forbidden):
        carol.call("purge")
    # What `bastion roles carol --set admin` does (the auth plugin tests the command): carol's record changes,
    # then the domain's roles epoch, so that her session stops using the roles it carries.
    assert app.runtime.get_plugin("bastion_auth.runtime").set_roles("localhost", "carol", ["admin"]) is True
    assert carol.call("purge") == "purged"
    assert carol.call("read_news") == ["admin"]


def test_forbidden_calls_weigh_nothing_against_the_origin(users_app, login):
    """A Forbidden answers a call that proved its session's key: a user clicking what their role does not allow,
    which must not ban everyone behind their address (docs/security.md)."""
    app = users_app(USERS, sections={"permissions": RULES, "roles": ROLES, "auth": {"abuse_max": 6}},
                    plugins=[NewsPlugin()], only=["storage_mem", "auth", "permissions"])
    carol = login("carol", app=app)
    for _ in range(10):
        with pytest.raises(Forbidden):
            carol.call("purge")
    assert carol.call("read_news") == []


# -- the section ---------------------------------------------------------------------------

def test_the_section_is_read_into_sets_of_roles():
    config = Config.from_dict({"permissions": {"publish": "editor,admin, editor", "purge": "admin\nroot"}})
    assert read(config) == {"publish": frozenset({"editor", "admin"}), "purge": frozenset({"admin", "root"})}
    assert read(Config.from_dict({})) == {}


@pytest.mark.parametrize("rules, message", [
    ({"publish": ""}, "names no role"),
    ({"publish": " , "}, "names no role"),
    ({"publish": "editor, not a role"}, "is not a role name"),
    ({"publish": "x" * 65}, "is not a role name"),
    ({"bad service!": "admin"}, "not a service name"),
])
def test_a_bad_entry_stops_the_start(users_app, rules, message):
    with pytest.raises(ConfigError, match=r"\[permissions\]") as info:
        users_app(USERS, sections={"permissions": rules}, plugins=[NewsPlugin()],
                  only=["storage_mem", "auth", "permissions"])
    assert message in str(info.value)


def test_an_unknown_service_name_stops_the_start(users_app):
    with pytest.raises(ConfigError, match=r"\[permissions\] pubish: no such service") as info:
        users_app(USERS, sections={"permissions": {"pubish": "editor"}}, plugins=[NewsPlugin()],
                  only=["storage_mem", "auth", "permissions"])
    assert "publish" in str(info.value)  # the known names are listed


def test_without_the_plugin_a_permissions_section_stops_the_start(users_app):
    with pytest.raises(ConfigError, match=r"\[permissions\]: unknown section"):
        users_app(USERS, sections={"permissions": RULES}, plugins=[NewsPlugin()], only=["storage_mem", "auth"])


def test_the_account_services_can_be_listed_too(users_app, login):
    users_app(USERS, sections={"permissions": {"change_password": "admin", "end_sessions": "admin"}, "roles": ROLES},
              plugins=[NewsPlugin()], only=["storage_mem", "auth", "permissions"])
    with pytest.raises(Forbidden):
        login("alice").call("change_password", PASSWORD, "another long password")
    assert login("bob").call("end_sessions") == 0


# -- replacing or extending it ----------------------------------------------------------------

class WeekendOnly:
    """A third party's rule beside the default one: nobody purges (say, outside a maintenance window)."""

    @hookimpl
    def bastion_has_permission(self, service, request):
        return False if service == "purge" else None


class EveryoneMayPublish:
    """A third party's authorization instead of the default one: it allows every call."""

    @hookimpl
    def bastion_has_permission(self, service):
        return True


def test_another_plugin_can_deny_beside_it(users_app, login):
    users_app(USERS, sections={"permissions": RULES, "roles": ROLES}, plugins=[NewsPlugin(), WeekendOnly()],
              only=["storage_mem", "auth", "permissions"])
    bob = login("bob")
    with pytest.raises(Forbidden):
        bob.call("purge")
    assert bob.call("publish", "x")["by"] == "bob"


def test_a_true_elsewhere_cannot_overrule_its_false(users_app, login):
    users_app(USERS, sections={"permissions": RULES, "roles": ROLES}, plugins=[NewsPlugin(), EveryoneMayPublish()],
              only=["storage_mem", "auth", "permissions"])
    with pytest.raises(Forbidden):
        login("carol").call("publish", "x")


def test_it_can_be_left_out_and_replaced(users_app, login):
    app = users_app(USERS, plugins=[NewsPlugin(), EveryoneMayPublish()], only=["storage_mem", "auth"])
    assert login("carol").call("purge") == "purged"
    assert not any(isinstance(plugin, Permissions) for plugin in app.runtime.pm.get_plugins())
