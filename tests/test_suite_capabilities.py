"""Declared capabilities: ``requires`` skips a test when the driver under test lacks what it names.

The suite runs in a pytest of its own (a subprocess), so that its skips and
failures are outcomes to check rather than this session's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from kernel.testing import DriverSuite, HealthSuite, RecordsSuite, StateSuite, UnitOfWorkSuite, requires
from kernel.testing.suite.base import declared_capabilities

ADOPTER = textwrap.dedent('''
    import pytest

    from kernel.testing import SuiteBase, requires


    class Driver:
        def __init__(self, *capabilities):
            if capabilities:
                self.capabilities = frozenset(capabilities)


    class Checks(SuiteBase):
        def test_always(self, driver):
            pass

        @requires("persistent")
        def test_persistent(self, driver, reopen):
            assert reopen() == "reopened"

        @pytest.mark.requires("persistent", "process_local")
        def test_both(self, driver):
            pass


    class TestDeclaresPersistent(Checks):
        @pytest.fixture
        def driver(self):
            return Driver("persistent")

        @pytest.fixture
        def reopen(self):
            return lambda: "reopened"


    class TestDeclaresNothing(Checks):
        @pytest.fixture
        def driver(self):
            return Driver()


    class TestModuleOverridesTheFixture(Checks):
        @pytest.fixture
        def driver(self):
            return Driver("process_local")

        @pytest.fixture
        def capabilities(self):
            return {"persistent", "process_local"}

        @pytest.fixture
        def reopen(self):
            return lambda: "reopened"


    class TestPersistentWithoutReopen(Checks):
        @pytest.fixture
        def driver(self):
            return Driver("persistent")
''')


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, str]:
    """Run the adopter module in its own pytest; return ``{Class::test: passed|skipped|failed|error}``."""
    folder = tmp_path_factory.mktemp("adopter")
    (folder / "test_adopter.py").write_text(ADOPTER, encoding="utf-8")
    report = folder / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers",
                    f"--junitxml={report}", "--rootdir", str(folder), str(folder / "test_adopter.py")],
                   cwd=folder, capture_output=True, text=True, timeout=120)
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("skipped", "failure", "error")), "passed")
        results[f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"] = {
            "failure": "failed"}.get(outcome, outcome)
    return results


def test_a_declared_capability_runs_its_tests(outcomes):
    assert outcomes["TestDeclaresPersistent::test_always"] == "passed"
    assert outcomes["TestDeclaresPersistent::test_persistent"] == "passed"
    assert outcomes["TestDeclaresPersistent::test_both"] == "skipped"  # it lacks process_local


def test_capabilities_default_off(outcomes):
    assert outcomes["TestDeclaresNothing::test_always"] == "passed"
    assert outcomes["TestDeclaresNothing::test_persistent"] == "skipped"  # and never asked for a reopen fixture
    assert outcomes["TestDeclaresNothing::test_both"] == "skipped"


def test_a_test_module_may_override_what_the_driver_declares(outcomes):
    assert outcomes["TestModuleOverridesTheFixture::test_persistent"] == "passed"
    assert outcomes["TestModuleOverridesTheFixture::test_both"] == "passed"


def test_a_persistent_driver_without_reopen_fails_loudly(outcomes):
    assert outcomes["TestPersistentWithoutReopen::test_persistent"] in ("failed", "error")
    assert outcomes["TestPersistentWithoutReopen::test_always"] == "passed"


def test_requires_is_a_pytest_mark():
    mark = requires("persistent").mark
    assert (mark.name, mark.args) == ("requires", ("persistent",))
    with pytest.raises(TypeError):
        requires()
    with pytest.raises(TypeError):
        requires("")


def test_declared_capabilities_reads_the_drivers_attribute():
    class Declares:
        capabilities = frozenset({"persistent"})

    class Wrong:
        capabilities = "persistent"

    assert declared_capabilities(Declares()) == frozenset({"persistent"})
    assert declared_capabilities(object()) == frozenset()
    with pytest.raises(TypeError):
        declared_capabilities(Wrong())


def test_the_driver_suite_is_its_four_parts():
    assert all(issubclass(DriverSuite, part) for part in (RecordsSuite, UnitOfWorkSuite, StateSuite, HealthSuite))
    names = {name for name in dir(DriverSuite) if name.startswith("test_")}
    for part in (RecordsSuite, UnitOfWorkSuite, StateSuite, HealthSuite):
        own = {name for name in vars(part) if name.startswith("test_")}
        assert own and own <= names
