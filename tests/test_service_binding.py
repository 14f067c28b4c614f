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


def test_plain_parameters_bind_as_inspect_binds_them():
    """Services whose parameters are all plain bind by position without inspect's binding: the same call, the same
    checks and the same refusal, for every shape of arguments tried."""

    def update(id: str, vsn: int, done: bool = False, title: str | None = None):
        return id, vsn, done, title

    def one(text: str):
        return text

    def untyped(a, b=2):
        return a, b

    shapes = [([], {}), (["x"], {}), (["x", 1], {}), (["x", 1, True], {}), (["x", 1, True, "t"], {}),
              (["x", 1, True, "t", 5], {}), (["x"], {"vsn": 1}), ([], {"id": "x", "vsn": 1}),
              (["x", 1], {"done": True}), (["x", 1], {"title": "t", "done": False}), (["x", 1], {"id": "y"}),
              (["x", 1], {"page": 2}), (["x", "1"], {}), ([1, 1], {}), (["x", 1], {"done": "yes"}),
              (["x", True], {"title": 3}), ([], {"vsn": 1}), (["x"], {"title": None}), ([None], {}), ([[]], {}),
              ([], {"text": "t"}), (["t"], {"text": "t"}), ([1], {"b": 3}), ([1, 2], {"b": 3})]
    for fn in (update, one, untyped):
        service = Service(fn.__name__, fn)
        for args, kwargs in shapes:
            try:
                bound = service.bind(list(args), dict(kwargs))
                expected: object = fn(*bound.args, **bound.kwargs)
            except InvalidCall as refused:
                expected = str(refused)
            try:
                got: object = service(list(args), dict(kwargs))
            except InvalidCall as refused:
                got = str(refused)
            assert got == expected, (fn.__name__, args, kwargs)
    assert Service("update", update)._plain == ("id", "vsn", "done", "title")
    assert Service("listing", lambda limit=10, *, done=None: 0)._plain is None  # a keyword-only: inspect binds
