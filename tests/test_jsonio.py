"""kernel.core.jsonio's writer and its reader of stored text: orjson where it writes or reads exactly what the
stdlib would, the stdlib otherwise; the strict reader of bodies is the stdlib's alone."""

from __future__ import annotations

import enum
import json
import math

import pytest

from kernel.core import jsonio

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


# -- the nesting of a body is read from its bytes, before it is parsed --------------------------


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _random_value(rng, depth: int):
    """A JSON value whose strings hold what could fool a reader of bytes: brackets, quotes, backslashes."""
    if depth <= 0 or rng.random() < 0.25:
        return rng.choice([1, -2.5, True, None, "", "[", "]]", "{\"[", "\\", "\\\"[{", "\\\\", "a\\\\\"]b", "é[",
                           "\U0001f600{"])
    if rng.random() < 0.5:
        return [_random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["[", "}", "k\\\"", "x", "\\\\{"]) + str(i): _random_value(rng, depth - 1)
            for i in range(rng.randrange(4))}


def test_the_nesting_read_from_the_bytes_is_the_parsed_values():
    import random

    rng = random.Random(20261201)
    for _ in range(600):
        value = _random_value(rng, rng.randrange(1, 9))
        for ascii_only in (False, True):
            body = json.dumps(value, ensure_ascii=ascii_only).encode()
            depth = _depth(value)
            for limit in (1, 2, 3, depth - 1, depth, depth + 1):
                if limit >= 1:
                    assert jsonio.nesting_within(body, limit) == (depth <= limit), (body, limit)


def test_a_body_nested_too_deep_is_refused_before_any_object_is_built(monkeypatch):
    """The reader refuses it from its bytes: the parser never runs (what it costs is a few passes in C)."""
    parsed = []
    real = jsonio._STRICT.decode
    monkeypatch.setattr(jsonio._STRICT, "decode", lambda *args, **kwargs: parsed.append(1) or real(*args, **kwargs))
    deep = b'{"args": [' + b"[" * 64 + b"]" * 64 + b"]}"
    review = b'{"username": [' + b",".join([b"[]"] * 5000) + b'], "password": "x"}'  # docs/security.md
    for body, limit in ((deep, jsonio.MAX_DEPTH), (b"[" * 100_000 + b"]" * 100_000, jsonio.MAX_DEPTH),
                        (review, 1), (b'{"a": {}}', 1)):
        with pytest.raises(ValueError, match="nested deeper"):
            jsonio.loads(body, max_depth=limit)
    assert parsed == []
    assert jsonio.loads(review, max_depth=3)["password"] == "x"
    assert jsonio.loads(b'{"p": "[[{{"}', max_depth=1) == {"p": "[[{{"}
    assert parsed == [1, 1]


@pytest.mark.parametrize("text, lone", [('"\\ud800"', True), ('"\\udc00"', True), ('"\\udc00\\ud800"', True),
                                        ('"\\ud800\\u0041"', True), ('"\\\\\\ud800"', True), ('"a\\ud83d"', True),
                                        ('"\\\\ud800"', False), ('"\\ud83d\\ude00"', False), ('"\\u00e9\\n"', False),
                                        ('["\\\\", "ud800"]', False), ('"\\\\\\\\ud800"', False)])
def test_a_lone_surrogate_is_found_in_the_escapes_without_writing_the_value_again(monkeypatch, text, lone):
    monkeypatch.setattr(json, "dumps", None)  # the check must not encode the value again
    if lone:
        with pytest.raises(ValueError, match="surrogate"):
            jsonio.loads(text.encode())
    else:
        assert jsonio.loads(text.encode()) == __import__("json").JSONDecoder().decode(text)


def test_loads_stored_all_reads_each_text_as_loads_stored_does(writer):
    texts = [jsonio.dumps_text(value) for value in VALUES]
    assert jsonio.loads_stored_all(texts) == [jsonio.loads_stored(text) for text in texts] == list(VALUES)
    big = jsonio.dumps_text({"n": 2 ** 70})  # one text orjson cannot read: the whole list is read one by one
    assert jsonio.loads_stored_all(iter([texts[0], big])) == [VALUES[0], {"n": 2 ** 70}]
    assert jsonio.loads_stored_all([]) == []
