"""How a service's JSON arguments bind to its function, with and without arguments."""

from __future__ import annotations

import pytest

from kernel import InvalidCall
from kernel.core.services import Service


def test_a_call_without_arguments_gets_every_default():
    def listing(limit: int = 10, *, done: bool | None = None):
        return limit, done

    service = Service("listing", listing)
    assert service([], {}) == (10, None)
    assert service([3], {"done": True}) == (3, True)


def test_a_call_without_arguments_still_needs_what_has_no_default():
    def get(id: str, *, fields: list | None = None):
        return id

    def keyed(*, key: str):
        return key

    for name, fn in (("get", get), ("keyed", keyed)):
        with pytest.raises(InvalidCall, match=name):
            Service(name, fn)([], {})


def test_variadic_parameters_bind_nothing_as_nothing():
    def anything(*args, **kwargs):
        return args, kwargs

    service = Service("anything", anything)
    assert service([], {}) == ((), {})
    assert service([1], {"a": 2}) == ((1,), {"a": 2})


def test_arguments_are_still_checked_when_there_are_some():
    def listing(limit: int = 10):
        return limit

    service = Service("listing", listing)
    with pytest.raises(InvalidCall, match="wrong type"):
        service(["ten"], {})
    with pytest.raises(InvalidCall, match="unexpected argument 'page'"):
        service([], {"page": 2})
