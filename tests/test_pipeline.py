"""The request pipeline is docs/protocol.md's list of checks, in its order, and docs/architecture.md prints it.

The pipeline (``kernel.http.pipeline``) is one ordered list of steps; each numbered step carries the number of
the protocol's step it performs. These tests compare the list with the protocol's numbered list (section 4, "The
order of checks"), fail a list reordered on purpose, and show that the order is what the server does.
"""

from __future__ import annotations

import re
from pathlib import Path

import falcon.testing
import pytest

from kernel import hookimpl
from kernel.core.errors import Abusive
from kernel.http import pipeline
from kernel.http.app import create_app
from kernel.http.settings import HttpSettings

ROOT = Path(__file__).resolve().parents[1]


def protocol_steps() -> dict[int, str]:
    """docs/protocol.md section 4's numbered checks: number -> its first words."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("**The order of checks.**"):text.index("**Permissions.**")]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^(\d+)\. (.+)$", section, re.M)}


def order_problems(steps) -> list[str]:
    """What is wrong with a list of steps, against the protocol's list (empty when nothing is)."""
    numbers = [n for step in steps for n in pipeline.Step.numbers(step)]
    expected = sorted(protocol_steps())
    problems = []
    if numbers != expected:
        problems.append(f"the pipeline performs the protocol's steps {numbers}, the protocol lists {expected}")
    phases = [step.phase for step in steps]
    if phases != sorted(phases, key=list(pipeline.Phase).index):
        problems.append(f"phases out of order: {[p.value for p in phases]}")
    return problems


def test_print_the_pipeline_next_to_the_protocols_list(capsys):
    listed = protocol_steps()
    print("\n".join(pipeline.describe()))
    for step in pipeline.ORDER:
        for number in pipeline.Step.numbers(step):
            print(f"  {number:>2}. {listed[number][:90]}")
    assert order_problems(pipeline.ORDER) == []
    assert len(listed) == 15


def test_each_numbered_step_names_what_the_protocol_refuses_there():
    listed = protocol_steps()
    for step in pipeline.ORDER:
        for number in pipeline.Step.numbers(step):
            refusals = set(re.findall(r"\d{3} ([A-Z][A-Za-z]+)", listed[number]))
            missing = {name for name in refusals if name not in step.does}
            assert not missing, f"step {step.name} ({number}) does not say it answers {missing}"


def test_a_reordered_pipeline_is_found_out():
    """Broken on purpose: the ban after the body checks, and the sign step before the call."""
    order = list(pipeline.ORDER)
    ban, limit = order.index(pipeline.BanStep), order.index(pipeline.BodyLimitStep)
    order[ban], order[limit] = order[limit], order[ban]
    assert order_problems(order) and "[1, 2, 4, 3, 5" in order_problems(order)[0]
    moved = [s for s in pipeline.ORDER if s is not pipeline.SignStep]
    moved.insert(moved.index(pipeline.AuthorizeStep), pipeline.SignStep)
    assert any("phases out of order" in p for p in order_problems(moved))


def test_architecture_md_shows_the_pipeline_as_it_is():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = "\n".join(pipeline.describe())
    assert block in text, "docs/architecture.md's pipeline is not `python -m kernel.http.pipeline`'s output"


def test_the_app_runs_the_default_steps_in_order(kernel_app):
    app = kernel_app()
    assert [type(step) for step in app.pipeline] == list(pipeline.ORDER)
    assert app.pipeline.describe() == pipeline.describe()


class Banned:
    """Every origin is banned (the ban step's hook refuses)."""

    @hookimpl
    def bastion_admit(self, request):
        raise Abusive("banned", retry_after=60)


@pytest.mark.parametrize("order, answer", [("protocol", 429), ("ban last", 413)])
def test_the_order_is_what_the_server_does(make_app, order, answer):
    """A banned origin's oversized body is 429 (step 3 before 4); with the ban moved after the body it would be 413."""
    app = make_app({"bastion": {"max_body": "10"}}, plugins=[Banned()], only=["storage_mem"])
    if order == "ban last":
        runtime = app.runtime
        steps = pipeline.default_steps(runtime, HttpSettings.from_config(runtime.config))
        ban = next(s for s in steps if isinstance(s, pipeline.BanStep))
        steps.remove(ban)
        steps.insert(next(i for i, s in enumerate(steps) if isinstance(s, pipeline.AuthenticateStep)), ban)
        app = create_app(runtime, steps)
    client = falcon.testing.TestClient(app, headers={"Host": "localhost"})
    result = client.simulate_post("/api/anything", body=b'{"args": ["more than ten bytes"]}',
                                  headers={"Content-Type": "application/json"})
    assert result.status_code == answer
