"""A software authenticator for the passkey tests: it answers WebAuthn ceremonies as a browser and a platform
authenticator would (``navigator.credentials.create()`` and ``.get()``, in their JSON form), with an ECDSA P-256
key of ``cryptography`` and the ``webauthn`` library's CBOR encoder. Only the tests build credentials; the server
verifies them with the library alone.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import encode_cbor

from kernel import b64url, b64url_decode, loads
from kernel.testing import Client, Session

#: Authenticator data flags: user present, user verified, attested credential data.
UP, UV, AT = 0x01, 0x04, 0x40


def _cose_key(public: ec.EllipticCurvePublicKey) -> bytes:
    numbers = public.public_numbers()
    return encode_cbor({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})


@dataclass
class Credential:
    """One credential the authenticator holds: its id, key, user handle and counter."""

    rp_id: str
    user_handle: bytes
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    sign_count: int = 0


class SoftAuthenticator:
    """A platform authenticator with resident keys: ``create`` answers creation options, ``get`` request options.

    ``counting``: whether it increments its signature counter (many passkey providers report 0 always).
    ``verifies``: whether it sets the user-verified flag.
    """

    def __init__(self, origin: str, counting: bool = True, verifies: bool = True):
        self.origin = origin
        self.counting = counting
        self.verifies = verifies
        self.credentials: list[Credential] = []

    def _flags(self, extra: int = 0) -> int:
        return UP | (UV if self.verifies else 0) | extra

    def create(self, public_key: dict[str, Any], origin: str | None = None) -> dict[str, Any]:
        """The JSON of ``navigator.credentials.create({publicKey})``: a "none" attestation of a new credential."""
        rp_id = public_key["rp"]["id"]
        credential = Credential(rp_id, b64url_decode(public_key["user"]["id"]))
        self.credentials.append(credential)
        client_data = self._client_data("webauthn.create", public_key["challenge"], origin)
        attested = (bytes(16) + struct.pack(">H", len(credential.credential_id)) + credential.credential_id
                    + _cose_key(credential.key.public_key()))
        auth_data = (hashlib.sha256(rp_id.encode()).digest() + bytes([self._flags(AT)])
                     + struct.pack(">I", credential.sign_count) + attested)
        attestation = encode_cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {"id": b64url(credential.credential_id), "rawId": b64url(credential.credential_id),
                "type": "public-key", "clientExtensionResults": {}, "authenticatorAttachment": "platform",
                "response": {"clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation),
                             "transports": ["internal"]}}

    def get(self, public_key: dict[str, Any], credential: Credential | None = None, origin: str | None = None,
            rp_id: str | None = None, sign_count: int | None = None) -> dict[str, Any]:
        """The JSON of ``navigator.credentials.get({publicKey})`` with ``credential`` (default: the latest
        for the options' RP ID); ``origin``, ``rp_id`` and ``sign_count`` forge what a genuine one would not."""
        rp = public_key.get("rpId")
        credential = credential or [c for c in self.credentials if c.rp_id == rp][-1]
        if sign_count is None:
            if self.counting:
                credential.sign_count += 1
            sign_count = credential.sign_count
        client_data = self._client_data("webauthn.get", public_key["challenge"], origin)
        auth_data = (hashlib.sha256((rp_id or credential.rp_id).encode()).digest() + bytes([self._flags()])
                     + struct.pack(">I", sign_count))
        signature = credential.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {"id": b64url(credential.credential_id), "rawId": b64url(credential.credential_id),
                "type": "public-key", "clientExtensionResults": {}, "authenticatorAttachment": "platform",
                "response": {"clientDataJSON": b64url(client_data), "authenticatorData": b64url(auth_data),
                             "signature": b64url(signature), "userHandle": b64url(credential.user_handle)}}

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin or self.origin,
                           "crossOrigin": False}).encode()


# -- the protocol, by hand --------------------------------------------------------------------------------------------

def post(client: Client, path: str, payload: Any) -> tuple[int, dict[str, Any]]:
    """POST a JSON body to an unsigned route; the status and the JSON answer."""
    response = client.request(path, json.dumps(payload).encode())
    return response.status, loads(response.body)


def login_options(client: Client, username: str | None = None) -> dict[str, Any]:
    """The ``publicKey`` request options of a new login challenge."""
    status, answer = post(client, "/auth/passkey/options", {"username": username} if username else {})
    assert status == 200, answer
    return answer["publicKey"]


def passkey_login(client: Client, credential: dict[str, Any], **extra: Any) -> tuple[int, dict[str, Any]]:
    """Send an assertion; on 200 the client holds the new session (as ``Client.login`` would)."""
    status, answer = post(client, "/auth/passkey/login", {"credential": credential, **extra})
    if status == 200:
        client.offset = float(answer["server_time"]) - client.clock()
        client.session = Session(answer["sid"], b64url_decode(answer["key"]), answer["expires"], answer["user"],
                                 answer["limits"])
    return status, answer


def register(client: Client, authenticator: SoftAuthenticator, name: str = "Laptop") -> dict[str, Any]:
    """Register a passkey of the client's user through the signed services; its description."""
    options = client.call("passkey_options")["publicKey"]
    return client.call("add_passkey", authenticator.create(options), name)
