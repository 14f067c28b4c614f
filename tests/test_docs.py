"""Docs cannot drift from the hooks: every hook has a docstring and a docs entry."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kernel import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = hookspecs.hook_names()


def test_there_are_hooks():
    assert "bastion_authenticate" in HOOKS and len(HOOKS) >= 12


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_docstring_that_says_who_calls_it(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"{name} has no docstring"
    assert "Called by" in doc, f"{name}'s docstring does not say who calls it"
    assert "Return" in doc, f"{name}'s docstring does not say what it returns"
    opts = getattr(hookspecs, name).bastion_spec
    if opts.get("firstresult"):
        assert "Stops at the first non-None result." in doc


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name):
    text = (ROOT / "docs" / "hooks.md").read_text()
    assert f"### `{name}(" in text, f"docs/hooks.md has no entry for {name}"
    arguments = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"### `{name}({arguments})`" in text, f"docs/hooks.md names other arguments for {name} than ({arguments})"


def test_readme_shows_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text


def test_readme_documents_every_config_key():
    from kernel.config import BASTION_SCHEMA, SERVER_SCHEMA

    text = (ROOT / "README.md").read_text()
    for section, schema in (("bastion", BASTION_SCHEMA), ("server", SERVER_SCHEMA)):
        for key in schema:
            assert f"`{key}`" in text, f"README.md does not document [{section}] {key}"
