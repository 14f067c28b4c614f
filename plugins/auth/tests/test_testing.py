"""The plugin's pytest fixtures for plugin authors (bastion_auth.testing): ``users_app`` and ``login``."""

from __future__ import annotations

import re

import pytest
from auth_helpers import ServicesPlugin
from bastion_auth import users
from bastion_auth.settings import AUTH_SCHEMA

from kernel import InvalidCredential
from kernel.testing import Client


def stored_hash(app, username: str, domain: str) -> str:
    with app.runtime.bind(domain):
        return users.find(username).password


def test_users_app_stores_each_user_with_a_cheap_hash(users_app):
    app = users_app({"alice@localhost": "alice's password", "bob@Beta.Localhost": "bob's password"},
                    only=["storage_mem"])
    assert {k: int(v) for k, v in re.findall(r"([mt])=(\d+)", stored_hash(app, "bob", "beta.localhost"))} == {
        "m": 64, "t": 1}
    assert stored_hash(app, "alice", "localhost").startswith("$argon2id$")
    auth = app.runtime.config.section("auth", AUTH_SCHEMA)  # the app hashes and verifies with the same parameters
    assert (auth.argon2_memory_cost, auth.argon2_time_cost) == (64, 1)


def test_login_returns_a_client_logged_in_on_the_users_domain(users_app, login):
    users_app({"alice@localhost": "alice's password", "bob@beta.localhost": "bob's password"},
              plugins=[ServicesPlugin()], only=["storage_mem"])
    alice = login("alice")  # a bare username is at localhost
    bob = login("bob@beta.localhost")
    assert isinstance(alice, Client)
    assert alice.call("echo", "x")["user"] == "alice"
    assert bob.call("echo", "y")["domain"] == "beta.localhost"


def test_login_takes_another_password_and_another_app(users_app, login):
    first = users_app({"alice@localhost": "alice's password"}, only=["storage_mem"])
    users_app({"carol@localhost": "carol's password"}, only=["storage_mem"])
    with pytest.raises(InvalidCredential):
        login("alice@localhost", password="not her password", app=first)
    assert login("alice@localhost", app=first).session is not None
    with pytest.raises(LookupError):
        login("alice@localhost")  # the last app has no alice


def test_login_needs_an_app(login):
    with pytest.raises(LookupError):
        login("alice@localhost")
