"""What every part of the conformance suite shares: its fixtures, declared capabilities, and helpers.

A driver declares what it can do beyond the semantics every driver keeps
(docs/storage.md) in a ``capabilities`` attribute, a frozenset of names;
missing means none. The suite knows these:

``persistent``     data survives closing the driver and opening a new one on
                   the same backend; the suite subclass provides a ``reopen``
                   fixture: a callable returning that new driver.
``process_local``  the data lives in one process's memory (``mem://``); the
                   kernel then runs gunicorn with one worker. No test of the
                   suite requires it.

A test that needs a capability is marked with :func:`requires`; it is
skipped, with the reason, when the driver under test lacks it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor

import pytest

from kernel.core.driver import MAX_ID_LENGTH, Driver
from kernel.testing.clock import FakeClock

#: The name of the pytest mark :func:`requires` makes (registered by the ``bastion`` pytest plugin).
MARK = "requires"

#: Threads of the suite's races.
THREADS = 16

#: Strings no driver may store: lone surrogates, which UTF-8 cannot encode.
UNENCODABLE = ["\ud800", "caf\u00e9 \udfff", "\udc80 at the start", "a pair \ud83d\ude00 is two lone surrogates in Python"]

#: Strings that break the record-id rule (kernel.core.driver.is_record_id).
BAD_IDS = ["", "a\u0000b", "x" * (MAX_ID_LENGTH + 1), "a\ud800"]


def requires(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a test as needing every named capability: it is skipped when the driver under test lacks one.

    ::

        @requires("persistent")
        def test_records_survive_reopen(self, driver, reopen): ...

    It is the pytest mark ``requires`` (``@pytest.mark.requires("persistent")``
    is the same); the suite reads the driver's capabilities from the
    ``capabilities`` fixture.
    """
    if not capabilities or not all(isinstance(name, str) and name for name in capabilities):
        raise TypeError("requires() takes one or more capability names, e.g. requires('persistent')")
    return getattr(pytest.mark, MARK)(*capabilities)


def required_capabilities(node: pytest.Item) -> frozenset[str]:
    """The capabilities the :func:`requires` marks of a test (and of its class) name."""
    return frozenset(name for mark in node.iter_markers(MARK) for name in mark.args)


def declared_capabilities(driver: object) -> frozenset[str]:
    """A driver's ``capabilities`` attribute as a frozenset; a driver without one declares none."""
    declared = getattr(driver, "capabilities", None)
    if declared is None:
        return frozenset()
    if isinstance(declared, str) or not isinstance(declared, Collection):
        raise TypeError(f"{type(driver).__name__}.capabilities is {declared!r}: it must be a frozenset of names")
    return frozenset(declared)


def run_together(n: int, fn: Callable[[int], object]) -> list:
    """Run ``fn(i)`` in ``n`` threads released at once; return results or raised exceptions."""
    barrier = threading.Barrier(n)

    def call(i: int):
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:  # collected, asserted by the caller
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


class SuiteBase:
    """The fixtures every part of the suite uses. A subclass provides ``driver``; the rest have defaults."""

    @pytest.fixture(autouse=True)
    def _skip_without_required_capabilities(self, request):
        """Skip a test marked :func:`requires` when the driver lacks a capability (asks ``capabilities`` only then)."""
        needed = required_capabilities(request.node)
        if needed:
            have = frozenset(request.getfixturevalue("capabilities"))
            missing = sorted(needed - have)
            if missing:
                pytest.skip(f"the driver lacks {', '.join(missing)} "
                            f"(it declares {', '.join(sorted(have)) or 'no capability'})")

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The clock the driver must be opened with."""
        return FakeClock()

    @pytest.fixture
    def driver(self, clock) -> Driver:  # pragma: no cover - always overridden
        """A ready driver opened with ``clock``: override in the subclass."""
        raise NotImplementedError("a suite subclass provides the `driver` fixture")

    @pytest.fixture
    def capabilities(self, driver) -> frozenset[str]:
        """What the driver under test can do: its own ``capabilities`` attribute (none when it has none).

        Override to declare them in the test module instead.
        """
        return declared_capabilities(driver)

    @pytest.fixture
    def reopen(self) -> Callable[[], Driver]:
        """A callable returning a new driver on the same backend as ``driver``: a persistent driver's suite provides it."""
        pytest.fail("the driver is persistent, so its suite subclass provides a `reopen` fixture: a callable "
                    "returning a new driver on the same backend", pytrace=False)

    @pytest.fixture
    def domain(self) -> str:
        """A fresh domain, so that suites can share one backend."""
        return f"d{uuid.uuid4().hex[:12]}.test"

    @pytest.fixture
    def other_domain(self) -> str:
        """A second fresh domain."""
        return f"e{uuid.uuid4().hex[:12]}.test"
