"""The Python client over HTTPS: the server's certificate is verified, against a private CA when told (docs/client.md)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from passlib.hash import argon2

from kernel.testing import Client

PASSWORD = "correct horse battery"


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # the test's own server: Bastion logs the calls
        pass


@pytest.fixture
def tls_server(make_app, tmp_path):
    """The app behind a TLS socket whose self-signed certificate names 127.0.0.1; yields (url, certificate path)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test's certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    hashed = argon2.using(type="ID", memory_cost=64, rounds=1).hash(PASSWORD)
    app = make_app({"users": {"alice@localhost": hashed}, "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1}},
                   only=["storage_mem", "auth", "todo"], clock=__import__("time").time)
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", str(cert)
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_verifies_the_certificate_against_the_ca_it_is_given(tls_server):
    url, cert = tls_server
    client = Client(url, host="localhost", cafile=cert)
    assert client.login("alice", PASSWORD) == {"username": "alice", "domain": "localhost"}
    assert client.call("add", "over TLS")["text"] == "over TLS"
    context = ssl.create_default_context(cafile=cert)
    assert Client(url, host="localhost", ssl_context=context).login("alice", PASSWORD)["username"] == "alice"


def test_an_unknown_certificate_is_refused(tls_server):
    url, _ = tls_server
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(url, host="localhost").login("alice", PASSWORD)


def test_tls_options_that_contradict_each_other_are_refused():
    with pytest.raises(ValueError, match="not both"):
        Client("https://example.com", cafile="ca.pem", ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="keyfile needs certfile"):
        Client("https://example.com", keyfile="key.pem")
