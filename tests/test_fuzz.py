"""Property-based fuzzing of the two doors of the server: ``/auth/login`` and signed ``/api/*`` calls.

Whatever the body and the headers, the answer is never a 5xx, is always the
``{exc, err}`` shape of docs/protocol.md section 2 when it is an error, and a call
that was refused changed nothing. Runs in-process on mem:// with the real
auth and todo plugins.
"""

from __future__ import annotations

import functools
import json
import os

import falcon.testing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.core.config import Config
from kernel.core.plugins import get_plugin_manager
from kernel.core.signing import authorization, new_nonce, request_mac
from kernel.testing import FakeClock

PASSWORD = "correct horse battery"
SERVICES = ["get_all", "add", "update", "remove", "clear_completed", "history", "permitted", "change_password", "sessions",
            "end_sessions", "nope", "", "add/x", "a" * 200]
#: Examples per test; BASTION_FUZZ_EXAMPLES=5000 digs deeper (by hand, not in CI).
FUZZ = settings(max_examples=int(os.environ.get("BASTION_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Any code point, lone surrogates included (json.dumps escapes them as \udxxx, as a hostile client would send them).
any_text = st.text(st.characters(codec=None, categories=None), max_size=20)
#: Strings that broke something once, or might: lone surrogates, NUL, bidi controls, the length limit, blanks.
nasty_strings = st.sampled_from(["\ud800", "x\udc00y", "\udfff\ud800", "a\x00b", "\u202e", "a" * 1001, " \u3000 ", ""])
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | any_text
                | nasty_strings)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
nasty_text = st.sampled_from(['"\\ud800"', '"\\udfff x"', '"\\u0000"', '"' + "\\\\" * 3 + '"', "1e400", "-1e999", "NaN",
                              "[" * 70 + "]" * 70, "[" * 3000 + "]" * 3000, "{" * 3, '{"a":1,"a":2}',
                              '"\\ud83d\\ude00"', "0" * 5000])


def _body_variants(keys: st.SearchStrategy) -> st.SearchStrategy:
    """Bodies: valid-looking objects of ``keys``, any JSON, nasty fragments spliced in, and raw bytes."""
    objects = st.dictionaries(keys, json_values, max_size=4).map(lambda d: json.dumps(d).encode())
    spliced = st.tuples(keys, nasty_text).map(lambda kv: ("{" + json.dumps(kv[0]) + ":" + kv[1] + "}").encode())
    in_a_list = st.tuples(keys, nasty_text).map(lambda kv: ("{" + json.dumps(kv[0]) + ":[" + kv[1] + "]}").encode())
    return st.one_of(objects, spliced, in_a_list, json_values.map(lambda v: json.dumps(v).encode()),
                     st.binary(max_size=64), nasty_text.map(str.encode))


login_bodies = _body_variants(st.sampled_from(["username", "password", "force", "extra"]))
call_bodies = _body_variants(st.sampled_from(["args", "kwargs", "other"]))
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "", "APPLICATION/JSON",
                                 "application/json;", "multipart/form-data; boundary=x"])
extra_headers = st.dictionaries(st.sampled_from(["X-Forwarded-For", "X-Forwarded-Proto", "Authorization", "Expect",
                                                 "X-Request-Id", "Content-Encoding", "Origin"]), header_values, max_size=3)


@functools.cache
def _hash() -> str:
    from passlib.hash import argon2

    return argon2.using(type="ID", memory_cost=64, rounds=1).hash(PASSWORD)


@pytest.fixture(scope="module")
def fuzz_app():
    from kernel.core.runtime import Runtime
    from kernel.http.app import create_app

    config = Config.from_dict({
        "bastion": {"development": True, "storage": "mem://", "trusted_proxies": "127.0.0.1"},
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1, "abuse_max": 10**6, "account_max_failures": 10**6},
        "users": {"alice@localhost": _hash()},
    })
    runtime = Runtime(config, get_plugin_manager(only=["storage_mem", "auth", "todo"], trace=False), clock=FakeClock())
    app = create_app(runtime.start())
    yield app
    app.runtime.close()


def assert_protocol_answer(result) -> None:
    assert result.status_code < 500, (result.status_code, result.text[:500])
    body = json.loads(result.content)
    if result.status_code >= 400:
        assert isinstance(body.get("exc"), str), body
        assert isinstance(body.get("err"), list) and all(isinstance(m, str) for m in body["err"]), body


def snapshot(app) -> list:
    """Every record of every model in the tenant, as stored, with its kept history."""
    driver = app.runtime.records
    return [(m.name, r.id, r.vsn, r.data, driver.history("localhost", m.name, r.id))
            for m in app.runtime.models for r in driver.select("localhost", m.name)]


def login(app) -> tuple[str, bytes]:
    result = falcon.testing.simulate_post(app, "/auth/login", host="localhost",
                                          json={"username": "alice", "password": PASSWORD})
    from kernel.core.signing import b64url_decode

    return result.json["sid"], b64url_decode(result.json["key"])


@FUZZ
@given(body=login_bodies, content_type=content_types, headers=extra_headers,
       host=st.sampled_from(["localhost", "LOCALHOST.", "evil.example", "", "a,b", "[::1]", "localhost:99999"]))
def test_login_never_fails_with_a_5xx(fuzz_app, body, content_type, headers, host):
    before = snapshot(fuzz_app)
    all_headers = {**headers, "Host": host}
    if content_type:
        all_headers["Content-Type"] = content_type
    result = falcon.testing.simulate_request(fuzz_app, "POST", "/auth/login", body=body, headers=all_headers)
    assert_protocol_answer(result)
    if result.status_code != 200:
        assert snapshot(fuzz_app) == before


@FUZZ
@given(name=st.sampled_from(SERVICES), body=call_bodies, content_type=content_types, headers=extra_headers,
       mangle=st.sampled_from(["none", "mac", "ts", "sid", "header", "domain"]))
def test_signed_calls_never_fail_with_a_5xx_nor_half_write(fuzz_app, name, body, content_type, headers, mangle):
    sid, key = login(fuzz_app)
    path = f"/api/{name}"
    ts, nonce = str(int(fuzz_app.runtime.clock())), new_nonce()
    domain = "beta.localhost" if mangle == "domain" else "localhost"
    mac = request_mac(key, ts, nonce, path, domain, body)
    if mangle == "mac":
        mac = mac[::-1]
    elif mangle == "ts":
        ts = str(int(ts) - 3600)
    elif mangle == "sid":
        sid = sid[::-1]
    all_headers = {**headers, "Host": "localhost", "Authorization": authorization(sid, ts, nonce, mac)}
    if mangle == "header":
        all_headers["Authorization"] = headers.get("Authorization", "Bastion-HMAC garbage")
    if content_type:
        all_headers["Content-Type"] = content_type
    before = snapshot(fuzz_app)
    result = falcon.testing.simulate_request(fuzz_app, "POST", path, body=body, headers=all_headers)
    assert_protocol_answer(result)
    if result.status_code != 200:
        assert snapshot(fuzz_app) == before


#: Each todo service and account service, and its parameters (docs/protocol.md sections 10 and 5), so that drawn
#: arguments mostly bind.
PARAMETERS = {"add": ["text"], "update": ["id", "vsn", "text", "done"], "remove": ["id", "vsn"],
              "clear_completed": [], "get_all": [], "history": ["id"], "permitted": [], "change_password": ["old", "new"],
              "sessions": [], "end_sessions": []}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
@FUZZ
@given(data=st.data())
def test_well_formed_calls_with_any_arguments_never_fail_with_a_5xx(fuzz_app, name, data):
    """Bodies that parse and mostly bind, so that every argument reaches the services and the storage."""
    sid, key = login(fuzz_app)
    params = PARAMETERS[name]
    existing = [(r[1], r[2]) for r in snapshot(fuzz_app) if r[0] == "Todo"]
    values = {p: data.draw(json_values, label=p) for p in params}
    aim = data.draw(st.booleans(), label="aim at a stored todo")  # drawn whatever the store holds
    if aim and existing and "id" in values:
        values["id"], values["vsn"] = existing[0]
    positional = data.draw(st.integers(0, len(params)), label="positional")
    args = [values[p] for p in params[:positional]]
    kwargs = {p: values[p] for p in params[positional:] if data.draw(st.booleans(), label=f"send {p}")}
    body = json.dumps({"args": args, "kwargs": kwargs}).encode()
    path = f"/api/{name}"
    ts, nonce = str(int(fuzz_app.runtime.clock())), new_nonce()
    headers = {"Host": "localhost", "Content-Type": "application/json",
               "Authorization": authorization(sid, ts, nonce, request_mac(key, ts, nonce, path, "localhost", body))}
    before = snapshot(fuzz_app)
    result = falcon.testing.simulate_request(fuzz_app, "POST", path, body=body, headers=headers)
    assert_protocol_answer(result)
    if result.status_code != 200:
        assert snapshot(fuzz_app) == before
