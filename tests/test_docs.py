"""Docs cannot drift from the hooks: every hook has a docstring and a docs entry."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kernel.core import hookspecs

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
    from kernel.core.config import BASTION_SCHEMA, METRICS_SCHEMA, SERVER_SCHEMA

    text = (ROOT / "README.md").read_text()
    assert "### `[metrics]`" in text
    for section, schema in (("bastion", BASTION_SCHEMA), ("server", SERVER_SCHEMA), ("metrics", METRICS_SCHEMA)):
        for key in schema:
            assert f"`{key}`" in text, f"README.md does not document [{section}] {key}"


def test_operations_documents_every_event_metric_and_deploy_check():
    """docs/operations.md names every security event the auth plugin writes, every kernel metric, every check id."""
    import re

    text = (ROOT / "docs" / "operations.md").read_text()
    sources = "\n".join(p.read_text() for p in [*ROOT.glob("kernel/**/*.py"), *ROOT.glob("plugins/*/bastion_*/*.py")])
    events = set(re.findall(r'(?:event|security_event)\(\s*(?:auth, )?"([a-z_]+)"', sources))
    events |= set(re.findall(r'\("([a-z_]+)", logging\.(?:WARNING|INFO)\)', sources))
    assert {"login", "login_failed", "banned", "account_locked", "unbanned"} <= events
    for event in events:
        assert f"| `{event}` |" in text, f"docs/operations.md does not describe the event {event}"
    metrics = set(re.findall(r'(?:counter|histogram|scrape_gauge)\(\s*"(bastion_[a-z_]+)"', sources))
    assert {"bastion_calls_total", "bastion_logins_total", "bastion_sessions"} <= metrics
    for metric in metrics:
        assert f"`{metric}`" in text, f"docs/operations.md does not describe the metric {metric}"
    for check in set(re.findall(r'"((?:bastion|auth|sql|redis)\.[EW]\d{3})"', sources)):
        assert f"| `{check}` |" in text, f"docs/operations.md does not describe the check {check}"


def test_the_docs_index_names_every_page_and_the_readme_links_it():
    """docs/README.md says which page answers which question: it links every page of docs/, and README.md links it."""
    index = (ROOT / "docs" / "README.md").read_text()
    pages = sorted(path.name for path in (ROOT / "docs").glob("*.md") if path.name != "README.md")
    assert [page for page in pages if f"]({page})" not in index] == []
    assert "(docs/README.md)" in (ROOT / "README.md").read_text()


# -- docs/protocol.md: the examples hold ----------------------------------------------------------------------------

def protocol() -> str:
    return (ROOT / "docs" / "protocol.md").read_text("utf-8")


def test_the_login_example_matches_the_default_settings():
    """The example answer's expires is server_time plus the default idle timeout, and its limits are the defaults."""
    import json
    import math
    import re

    from bastion_auth.settings import AUTH_SCHEMA

    from kernel.core.config import BASTION_SCHEMA

    text = protocol()
    block = text[text.index("**200:**"):text.index("| key | value |")]
    example = re.sub(r'"<[^"]*>"', '"x"', " ".join(line.strip() for line in block.splitlines()[1:]))
    answer = json.loads(example)
    idle = AUTH_SCHEMA["idle_timeout"].default
    assert answer["expires"] == math.floor(answer["server_time"] + idle)
    assert answer["limits"] == {"skew": AUTH_SCHEMA["skew"].default, "idle_timeout": idle,
                                "absolute_timeout": AUTH_SCHEMA["absolute_timeout"].default,
                                "max_body": BASTION_SCHEMA["max_body"].default}


def test_the_code_of_section_11_4_reproduces_its_example():
    text = protocol()
    start = text.index("### 11.4")
    code = text[text.index("```python", start) + len("```python"):text.index("```", text.index("```python", start) + 9)]
    exec(compile(code, "protocol.md 11.4", "exec"), {})  # its own assert checks the first example's mac
