"""docs/testing.md and the docstrings of kernel.testing name every fixture and export, and nothing that does not exist."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

import kernel.testing

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")


def fixtures_of(path: Path) -> set[str]:
    """The names of the functions a module decorates with ``pytest.fixture``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    names.add(node.name)
    return names


KERNEL_FIXTURES = fixtures_of(ROOT / "kernel" / "testing" / "fixtures.py")
AUTH_FIXTURES = fixtures_of(ROOT / "plugins" / "auth" / "bastion_auth" / "testing.py")


def test_the_plugins_have_the_fixtures_they_promise():
    assert KERNEL_FIXTURES == {"fake_clock", "make_app", "redis_server", "redis_cluster", "postgres_server",
                               "gunicorn_server"}
    assert AUTH_FIXTURES == {"users_app", "login"}


@pytest.mark.parametrize("name", sorted(KERNEL_FIXTURES | AUTH_FIXTURES))
def test_every_fixture_is_in_the_guide(name):
    assert f"| `{name}` |" in GUIDE, f"docs/testing.md has no row for the fixture {name}"


@pytest.mark.parametrize("name", kernel.testing.__all__)
def test_every_export_is_in_the_guide(name):
    assert f"`{name}" in GUIDE, f"docs/testing.md does not mention kernel.testing.{name}"


def test_the_docstring_names_exactly_the_kernels_fixtures():
    doc = kernel.testing.__doc__
    paragraph = doc[doc.index("The pytest plugin"):]
    assert set(re.findall(r"``(\w+)``", paragraph)) == KERNEL_FIXTURES


def test_the_fixtures_docstrings_name_their_fixtures():
    from kernel.testing import fixtures

    listed = set(re.findall(r"^``(\w+)``", fixtures.__doc__, re.MULTILINE))
    assert listed == KERNEL_FIXTURES
    if importlib.util.find_spec("bastion_auth") is not None:
        from bastion_auth import testing

        assert set(re.findall(r"^``(\w+)\(", testing.__doc__, re.MULTILINE)) == AUTH_FIXTURES
