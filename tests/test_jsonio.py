"""kernel.jsonio's writer and its reader of stored text: orjson where it writes or reads exactly what the
stdlib would, the stdlib otherwise; the strict reader of bodies is the stdlib's alone."""

from __future__ import annotations

import enum
import json
import math

import pytest

from kernel import jsonio

VALUES = [
    {"result": [{"id": "t0000001", "vsn": 1, "text": "todo 1", "done": False}]},
    {"result": None},
    {"text": "caf\u00e9 \u2603 \U0001f600", "n": -0.0, "f": 1.5e300, "small": 1e-7},
    {"big": 2**70, "neg": -(2**64)},
    [1, 2.5, "nullable", True, None],
    {"deep": [[[[{"a": []}]]]]},
    "plain",
    0,
]


class Kind(enum.IntEnum):
    ONE = 1


class Text(str):
    pass


@pytest.fixture(params=["orjson", "stdlib"])
def writer(request, monkeypatch):
    if request.param == "orjson":
        if jsonio._orjson is None:
            pytest.skip("orjson is not installed")
    else:
        monkeypatch.setattr(jsonio, "_orjson", None)
    return request.param


@pytest.mark.parametrize("value", VALUES)
def test_dumps_reads_back_as_the_stdlib_writes(writer, value):
    body = jsonio.dumps(value)
    assert json.loads(body) == json.loads(json.dumps(value))
    assert b", " not in body and b": " not in body  # compact
    assert b"\\u" not in body  # UTF-8 text kept as it is


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"a": [math.nan]}, {"x": None, "y": math.inf}])
def test_dumps_refuses_nan_and_infinity(writer, bad):
    with pytest.raises(ValueError):
        jsonio.dumps(bad)


def test_dumps_refuses_what_is_not_json(writer):
    with pytest.raises(TypeError):
        jsonio.dumps({"a": {1, 2}})
    with pytest.raises(TypeError):
        jsonio.dumps(object())
    with pytest.raises(UnicodeEncodeError):
        jsonio.dumps({"a": "\ud800"})


def test_dumps_writes_subclasses_as_their_base(writer):
    assert json.loads(jsonio.dumps({"k": Kind.ONE, "t": Text("x"), 3: "int key"})) == {"k": 1, "t": "x", "3": "int key"}


@pytest.mark.parametrize("value", VALUES)
def test_loads_stored_reads_what_dumps_text_wrote(writer, value):
    assert jsonio.loads_stored(jsonio.dumps_text(value)) == value


def test_loads_stored_gives_new_objects():
    text = jsonio.dumps_text({"a": [1]})
    first, second = jsonio.loads_stored(text), jsonio.loads_stored(text)
    assert first == second and first is not second and first["a"] is not second["a"]


@pytest.mark.parametrize("body", [b'{"a":1,"a":2}', b"NaN", b"[1e400]", b'"\\ud800"', b"[" * 65 + b"]" * 65,
                                  b"\xff"])
def test_the_body_reader_stays_strict(body):
    with pytest.raises(ValueError):
        jsonio.loads(body)
