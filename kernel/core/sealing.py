"""Protocol version 2 (docs/protocol.md section 16): the key agreement at login, the session's four keys, and the
envelope of encrypted ("sealed") calls and answers. Shared by the server, the Python client and the tests.

* **The key agreement** is ECDH on P-256: each side makes an ephemeral key pair for the login, and sends its public
  key as the 65 bytes of the uncompressed point (``04 || X || Y``), b64url. The shared secret is the 32 bytes of
  the x-coordinate of the product.
* **The keys** are four HKDF-SHA256 outputs of 32 bytes from that secret (empty salt), one per purpose, each bound
  by its ``info`` to the sid, the domain and both public keys: the MAC of calls, the MAC of answers, the
  encryption of calls, the encryption of answers (:func:`derive_keys`).
* **The envelope** is AES-256-GCM: ``iv (12 bytes) || ciphertext || tag (16 bytes)``, the IV random for every
  message, the associated data binding a call to its path, domain, ts and nonce (:func:`call_aad`) and an answer to
  the call it answers and its status (:func:`answer_aad`). The MAC of the signed channel still covers the envelope
  as sent.

``cryptography`` is imported when one of these is first used, so that importing the kernel stays cheap.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from kernel.core.signing import Sealing, b64url, b64url_decode

#: The media type of a sealed body, request or answer.
SEALED_TYPE = "application/vnd.bastion.sealed"
#: The version a login answer names when it agreed on keys.
VERSION = 2
#: Bytes of a public key: the uncompressed P-256 point.
PUBLIC_KEY_BYTES = 65
IV_BYTES = 12
TAG_BYTES = 16
#: The shortest envelope: an IV and a tag around an empty plaintext.
MIN_ENVELOPE = IV_BYTES + TAG_BYTES
KDF_TAG = "bastion-v2"
CALL_AAD_TAG = "bastion-v2-call"
ANSWER_AAD_TAG = "bastion-v2-answer"
#: The purposes of the session's four keys, in the order :class:`SessionKeys` holds them.
LABELS = ("call-mac", "answer-mac", "call-enc", "answer-enc")


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The four keys of a version-2 session (never in a repr: reprs end up in logs)."""

    call_mac: bytes = field(repr=False)
    answer_mac: bytes = field(repr=False)
    call_enc: bytes = field(repr=False)
    answer_enc: bytes = field(repr=False)


def kdf_info(label: str, sid: str, domain: str, client_public: str, server_public: str) -> bytes:
    """The HKDF ``info`` of one key: six lines joined by ``\\n``, UTF-8, no trailing newline."""
    return "\n".join((KDF_TAG, label, sid, domain, client_public, server_public)).encode("utf-8")


def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with an empty salt."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def derive_keys(secret: bytes, sid: str, domain: str, client_public: str, server_public: str) -> SessionKeys:
    """The session's four keys from the ECDH secret (public keys as sent: b64url)."""
    keys = [hkdf(secret, kdf_info(label, sid, domain, client_public, server_public)) for label in LABELS]
    return SessionKeys(*keys)


class KeyPair:
    """An ephemeral P-256 key pair: its private key never leaves the object, its public key is ``public`` (b64url)."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Any = None):
        from cryptography.hazmat.primitives.asymmetric import ec

        self._private = private if private is not None else ec.generate_private_key(ec.SECP256R1())
        self.public = b64url(_point(self._private.public_key()))

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public[:12]}…)"

    @classmethod
    def from_private_value(cls, value: int) -> KeyPair:
        """A key pair from a fixed private scalar (test vectors only)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        return cls(ec.derive_private_key(value, ec.SECP256R1()))

    def agree(self, peer_public: str) -> bytes:
        """The ECDH secret with a peer's public key (b64url); ValueError if it is not a P-256 point."""
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._private.exchange(ec.ECDH(), load_public(peer_public))


def _point(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def load_public(text: Any) -> Any:
    """A peer's public key from its b64url text: exactly 65 bytes, ``04`` and a point on P-256; else ValueError."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(text, str) or len(text) != 87:
        raise ValueError("a public key is the 65 bytes of an uncompressed P-256 point, b64url (87 characters)")
    raw = b64url_decode(text)
    if len(raw) != PUBLIC_KEY_BYTES or raw[0] != 4:
        raise ValueError("a public key is the 65 bytes of an uncompressed P-256 point, b64url (87 characters)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValueError("the public key is not a point of P-256") from None


def call_aad(ts: str, nonce: str, path: str, domain: str) -> bytes:
    """The associated data of a sealed call: five lines joined by ``\\n``, UTF-8."""
    return "\n".join((CALL_AAD_TAG, ts, nonce, path, domain)).encode("utf-8")


def answer_aad(nonce: str, status: int) -> bytes:
    """The associated data of a sealed answer: three lines joined by ``\\n``, UTF-8."""
    return "\n".join((ANSWER_AAD_TAG, nonce, str(int(status)))).encode("utf-8")


def seal(key: bytes, plaintext: bytes, aad: bytes, iv: bytes | None = None) -> bytes:
    """The envelope of ``plaintext``: ``iv || ciphertext || tag`` (a new random IV unless one is given)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = secrets.token_bytes(IV_BYTES) if iv is None else iv
    if len(iv) != IV_BYTES:
        raise ValueError("an IV is 12 bytes")
    return iv + AESGCM(key).encrypt(iv, plaintext, aad)


def open_envelope(key: bytes, envelope: bytes, aad: bytes) -> bytes:
    """The plaintext of an envelope; ValueError if it is too short or does not open under ``key`` and ``aad``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(envelope) < MIN_ENVELOPE:
        raise ValueError(f"an envelope is at least {MIN_ENVELOPE} bytes")
    try:
        return AESGCM(key).decrypt(envelope[:IV_BYTES], envelope[IV_BYTES:], aad)
    except InvalidTag:
        raise ValueError("the envelope does not open with this session's key") from None


def is_sealed(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names a sealed body (matched case-insensitively, parameters ignored)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == SEALED_TYPE


__all__ = ["SEALED_TYPE", "VERSION", "KeyPair", "Sealing", "SessionKeys", "answer_aad", "call_aad", "derive_keys",
           "is_sealed", "open_envelope", "seal"]
