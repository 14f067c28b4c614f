"""Protocol version 2 in the browser (docs/protocol.md section 16): bastion.js against the test vectors in Chromium,
and a whole UI session on a tenant that requires encrypted calls, through a proxy that records every byte."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from ui_helpers import add, expect, items, login

V2 = json.loads((Path(__file__).resolve().parents[3] / "docs" / "protocol-v2-vectors.json").read_text("utf-8"))

REPRODUCE = """
async (v) => {
  const P256 = {name: "ECDH", namedCurve: "P-256"};
  const own = await crypto.subtle.importKey("jwk", v.client.jwk, P256, false, ["deriveKey"]);
  const keys = await Bastion._deriveKeys(own, v.client.public_key, v.server.public_key, v.sid, v.domain);
  const decode = Bastion._b64urlDecode;
  const calls = [];
  for (const c of v.calls) {
    const envelope = await Bastion._seal(keys.callEnc, c.plaintext, Bastion._callAad(c.ts, c.nonce, c.path, v.domain),
                                         decode(c.iv));
    const signed = await Bastion._sign(keys.callMac, c.ts, c.nonce, c.path, v.domain, envelope);
    const answer = decode(c.answer_envelope);
    const opened = await Bastion._open(keys.answerEnc, answer, Bastion._answerAad(c.nonce, c.status));
    let moved = "opened";
    try { await Bastion._open(keys.answerEnc, answer, Bastion._answerAad(c.nonce, c.status + 1)); }
    catch (e) { moved = "refused"; }
    calls.push({
      envelope: Bastion._b64url(envelope), S: signed.S, mac: signed.mac,
      verifies: await Bastion._verifyResponse(keys.answerMac, c.nonce, c.status, answer, c.server_authorization),
      plaintext: new TextDecoder().decode(opened), moved,
    });
  }
  return {
    info: new TextDecoder().decode(Bastion._kdfInfo("answer-enc", v.sid, v.domain, v.client.public_key,
                                                    v.server.public_key)),
    extractable: [keys.callMac, keys.answerMac, keys.callEnc, keys.answerEnc].map((k) => k.extractable),
    usages: [keys.callMac, keys.answerMac, keys.callEnc, keys.answerEnc].map((k) => k.usages.join()),
    calls,
  };
}
"""


def test_bastion_js_reproduces_the_version_2_vectors(live_url, page):
    page.goto(live_url + "/", wait_until="networkidle")
    page.wait_for_function("() => window.Bastion !== undefined")
    got = page.evaluate(REPRODUCE, V2)
    assert got["info"] == V2["info"]["answer-enc"]
    assert got["extractable"] == [False] * 4  # the page never holds key bytes
    assert got["usages"] == ["sign", "verify", "encrypt", "decrypt"]
    for mine, vector in zip(got["calls"], V2["calls"], strict=True):
        assert mine == {"envelope": vector["envelope"], "S": vector["S"], "mac": vector["mac"], "verifies": True,
                        "plaintext": vector["answer_plaintext"], "moved": "refused"}


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 that relays every connection to a server and records every byte, both ways: what a
    TLS-terminating proxy or a body-logging middlebox sees."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.recorded: list[bytes] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.closing = False

    def __enter__(self) -> RecordingProxy:
        self._start(self._accept)
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._start(self._pump, client, server)
            self._start(self._pump, server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.recorded.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def seen(self) -> bytes:
        with self.lock:
            return b"".join(self.recorded)


SECRETS = ("Plum-4711-secret", "Fig-0815-private", "Quince-2626-hidden")


def test_a_whole_ui_session_never_shows_the_todos_to_a_recording_proxy(todo_gunicorn, page):
    """encryption = required: login, add, update, get_all (a reload), remove and logout through a recording proxy;
    no todo text ever crosses it in the clear, and no login answer carries a key."""
    server = todo_gunicorn(encryption="required")
    with RecordingProxy(server.port) as proxy:
        page.goto(f"http://localhost:{proxy.port}/")
        login(page)
        expect(page.locator("input.new-todo")).to_be_visible()
        assert page.evaluate("() => Bastion.session().version") == 2
        add(page, SECRETS[0])
        add(page, SECRETS[1])
        expect(items(page)).to_have_count(2)
        first = items(page).first
        first.locator("input.toggle").check()  # update
        expect(first).to_have_class("completed")
        first.locator("label").dblclick()
        first.locator("input.edit").fill(SECRETS[2])
        first.locator("input.edit").press("Enter")  # update again: a new text
        expect(first.locator("label")).to_have_text(SECRETS[2])
        page.reload()  # get_all
        expect(items(page).locator("label")).to_have_text([SECRETS[2], SECRETS[1]])
        items(page).nth(1).hover()
        items(page).nth(1).locator("button.destroy").click()  # remove
        expect(items(page)).to_have_count(1)
        page.click("button.logout")
        expect(page.locator("form#login")).to_be_visible()
        recorded = proxy.seen()
    assert b"/api/add" in recorded and b"/api/get_all" in recorded and b"/api/remove" in recorded
    assert b"application/vnd.bastion.sealed" in recorded
    for text in SECRETS:
        assert text.encode() not in recorded, f"{text} crossed the proxy in the clear"
    assert b'"public_key"' in recorded and b'"key"' not in recorded


@pytest.mark.parametrize("setting", [{"key_agreement": "required"}, {}])
def test_the_ui_logs_in_with_version_2_whatever_the_tenant_requires(todo_gunicorn, page, setting):
    server = todo_gunicorn(**setting)
    page.goto(f"http://localhost:{server.port}/")
    login(page)
    expect(page.locator("input.new-todo")).to_be_visible()
    assert page.evaluate("() => Bastion.session().version") == 2
    add(page, "sealed by default")
    expect(items(page)).to_have_count(1)


def test_the_recording_proxy_does_see_plain_calls(todo_gunicorn, page):
    """The control of the test above: the same proxy, a page that sends plain calls, and the todo is in its record."""
    server = todo_gunicorn()
    with RecordingProxy(server.port) as proxy:
        page.goto(f"http://localhost:{proxy.port}/")
        page.wait_for_function("() => window.Bastion !== undefined")
        page.evaluate("() => Bastion.configure({encrypt: false})")
        login(page)
        add(page, SECRETS[0])
        expect(items(page)).to_have_count(1)
        recorded = proxy.seen()
    assert SECRETS[0].encode() in recorded
