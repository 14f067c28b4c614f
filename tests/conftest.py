"""Fixtures for the kernel's own tests."""

from __future__ import annotations

import falcon.testing
import pytest

from kernel import hookimpl


class Caller:
    """Who a test authenticator says is calling."""

    def __init__(self, username: str):
        self.username = username


class HeaderAuth:
    """A toy authenticator for kernel tests: ``X-Test-User`` names the caller. Never for production."""

    @hookimpl
    def bastion_authenticate(self, request, service):
        from kernel.core.errors import Unauthorized

        user = request.header("X-Test-User")
        if not user:
            raise Unauthorized("no test user")
        return Caller(user)


@pytest.fixture
def kernel_app(make_app):
    """An app with the in-memory driver only: no auth plugin, so it must fail closed."""

    def make(sections=None, plugins=()):
        return make_app(sections, plugins=plugins, only=["storage_mem"])

    return make


@pytest.fixture
def client(kernel_app):
    """A test client of a kernel-only app, Host localhost."""
    return falcon.testing.TestClient(kernel_app(), headers={"Host": "localhost"})
