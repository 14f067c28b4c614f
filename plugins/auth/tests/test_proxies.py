"""Origins behind proxies (docs/protocol.md section 7): forwarded headers only from trusted proxies."""

from __future__ import annotations

from auth_helpers import PASSWORD, assert_error, login_body, send


def whoami(app, alice, remote_addr: str, forwarded: str | None = None, proto: str | None = None) -> dict:
    from auth_helpers import sign

    headers, _ = sign(alice, "/api/whoami", b"")
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    if proto is not None:
        headers["X-Forwarded-Proto"] = proto
    result = send(app, "/api/whoami", b"", headers, remote_addr=remote_addr)
    assert result.status_code == 200, result.json
    return result.json["result"]


def offend(app, remote_addr: str, forwarded: str | None = None, times: int = 10) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    for _ in range(times):
        send(app, "/api/echo", b"", headers, remote_addr=remote_addr)


def test_without_trusted_proxies_forwarded_headers_are_ignored(app, alice):
    assert whoami(app, alice, "192.0.2.1", "203.0.113.9", "https") == {"origin": "192.0.2.1", "scheme": "http"}


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(auth_app):
    app = auth_app(bastion={"trusted_proxies": "10.0.0.1"})
    offend(app, "192.0.2.1", forwarded="203.0.113.9")
    # the ban lands on the real peer, whatever it claims next
    assert_error(send(app, "/auth/login", login_body(), {"X-Forwarded-For": "198.51.100.4"},
                      remote_addr="192.0.2.1"), 429, "Abusive")
    assert send(app, "/auth/login", login_body(), remote_addr="203.0.113.9").status_code == 200


def test_an_untrusted_peer_cannot_rotate_origins_to_escape_the_ban(app):
    for i in range(10):
        send(app, "/api/echo", b"", {"X-Forwarded-For": f"203.0.113.{i}"}, remote_addr="192.0.2.1")
    assert_error(send(app, "/auth/login", login_body(), remote_addr="192.0.2.1"), 429, "Abusive")


def test_behind_a_trusted_proxy_the_right_most_untrusted_address_is_the_origin(auth_app, client_for):
    app = auth_app(bastion={"trusted_proxies": "10.0.0.0/8"})
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    # the client prepended a lie; the proxy appended the address it saw
    assert whoami(app, alice, "10.0.0.1", "6.6.6.6, 203.0.113.7")["origin"] == "203.0.113.7"
    # two proxies in a row: skip the trusted one
    assert whoami(app, alice, "10.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.2")["origin"] == "203.0.113.7"
    # no header from the proxy: the proxy itself
    assert whoami(app, alice, "10.0.0.1")["origin"] == "10.0.0.1"
    assert whoami(app, alice, "10.0.0.1", proto="https")["scheme"] == "https"


def test_a_ban_behind_a_trusted_proxy_lands_on_the_client_not_the_proxy(auth_app):
    app = auth_app(bastion={"trusted_proxies": "10.0.0.1"})
    offend(app, "10.0.0.1", forwarded="6.6.6.6, 203.0.113.7")
    assert_error(send(app, "/auth/login", login_body(), {"X-Forwarded-For": "1.1.1.1, 203.0.113.7"},
                      remote_addr="10.0.0.1"), 429, "Abusive")
    assert send(app, "/auth/login", login_body(), {"X-Forwarded-For": "203.0.113.8"},
                remote_addr="10.0.0.1").status_code == 200
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.1").status_code == 200


def test_garbage_in_forwarded_for_stops_believing_the_chain_there(auth_app, client_for):
    app = auth_app(bastion={"trusted_proxies": "10.0.0.0/8"})
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    assert whoami(app, alice, "10.0.0.1", "203.0.113.7, not-an-ip, 10.0.0.2")["origin"] == "10.0.0.2"
