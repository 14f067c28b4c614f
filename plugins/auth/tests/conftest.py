"""Fixtures of the auth plugin's tests: an in-process app with only the memory driver and auth.

Every app runs on the ``fake_clock`` fixture (kernel.testing), so expiry, bans
and locks move with ``fake_clock.advance`` and nothing sleeps.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

# The test modules import their helpers by name (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))

from auth_helpers import ALICE_HASH, CHEAP_AUTH, PASSWORD, DenyPlugin, ServicesPlugin  # noqa: E402

from kernel.testing import Client  # noqa: E402

# -- apps and clients --------------------------------------------------------

@pytest.fixture
def auth_app(make_app):
    """Factory: ``auth_app(auth={...}, users={...}, bastion={...}, plugins=[...])``."""

    def make(auth: Mapping | None = None, users: Mapping | None = None, bastion: Mapping | None = None,
             plugins=(), with_alice: bool = True, **sections):
        merged = {"auth": {**CHEAP_AUTH, **(auth or {})}}
        all_users = {"alice@localhost": ALICE_HASH} if with_alice else {}
        all_users.update(users or {})
        if all_users:
            merged["users"] = all_users
        if bastion:
            merged["bastion"] = dict(bastion)
        merged.update(sections)
        return make_app(merged, plugins=[ServicesPlugin(), DenyPlugin(), *plugins], only=["storage_mem", "auth"])

    return make


@pytest.fixture
def app(auth_app):
    """The default app: development mode, alice@localhost, cheap hashes."""
    return auth_app()


@pytest.fixture
def client_for(app, fake_clock):
    """Factory of in-process clients: ``client_for(host="localhost", remote_addr="127.0.0.1", app=...)``."""

    def make(host: str = "localhost", remote_addr: str = "127.0.0.1", target=None) -> Client:
        return Client(app=target or app, host=host, remote_addr=remote_addr, clock=fake_clock)

    return make


@pytest.fixture
def client(client_for):
    """An in-process client on localhost from 127.0.0.1."""
    return client_for()


@pytest.fixture
def alice(client):
    """A client logged in as alice@localhost."""
    client.login("alice", PASSWORD)
    return client


