"""The Python client and bastion.js accept the same unsigned answers (the ones the server cannot sign), and read
`Server-Authorization` by the same grammar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kernel.client import UNSIGNED, Client, InvalidResponseSignature, Session
from kernel.core.errors import BY_NAME
from kernel.core.signing import parse_authorization, parse_server_authorization, response_mac, server_authorization

BASTION_JS = Path(__file__).resolve().parents[1] / "kernel" / "static" / "bastion.js"


def test_both_clients_list_the_same_unsigned_answers_with_their_statuses():
    source = BASTION_JS.read_text(encoding="utf-8")
    block = re.search(r"var UNSIGNED = \{(.*?)\};", source, re.DOTALL).group(1)
    in_js = {name: int(status) for name, status in re.findall(r"(\w+): (\d+)", block)}
    assert set(in_js) == set(UNSIGNED)
    assert {name: BY_NAME[name].status for name in UNSIGNED} == in_js


# -- Server-Authorization: one grammar, read alike by both clients --------------------------------------------------

GRAMMAR = json.loads((Path(__file__).parent / "data" / "server-authorization.json").read_text("utf-8"))["values"]


@pytest.mark.parametrize("case", GRAMMAR, ids=[case["what"] for case in GRAMMAR])
def test_the_python_client_reads_server_authorization_as_the_protocol_says(case):
    """The same table is read by bastion.js in plugins/todo/tests/test_browser.py."""
    assert parse_server_authorization(case["value"]) == case["mac"]


def test_the_server_sends_server_authorization_in_the_form_the_table_accepts_first():
    assert GRAMMAR[0]["value"] == server_authorization(GRAMMAR[0]["mac"])


KEY = bytes(range(32))


def answering(times: int):
    """A WSGI app that answers every signed call 200 with a valid Server-Authorization, sent ``times`` times."""

    def app(environ, start_response):
        nonce = parse_authorization(environ["HTTP_AUTHORIZATION"])["nonce"]
        body = b'{"result":1}'
        header = server_authorization(response_mac(KEY, nonce, 200, body))
        start_response("200 OK", [("Content-Type", "application/json"),
                                  *[("Server-Authorization", header)] * times])
        return [body]

    return app


def client_of(app) -> Client:
    client = Client(app=app)
    client.session = Session("c2Vzc2lvbi1pZC0x", KEY, 0, {})
    return client


def test_a_server_authorization_sent_once_verifies():
    assert client_of(answering(1)).call("anything") == 1


def test_a_server_authorization_sent_twice_is_refused_even_when_both_are_valid():
    with pytest.raises(InvalidResponseSignature):
        client_of(answering(2)).call("anything")
