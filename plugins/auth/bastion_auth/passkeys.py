"""Passkeys (WebAuthn): registered by a signed-in user, then a way to log in without a password.

docs/protocol.md section 17. The WebAuthn ceremonies themselves (CBOR, COSE keys, attestation, signatures,
origins, RP ID hashes, counters) are the ``webauthn`` library's (py_webauthn); this module keeps the rest:

* the **challenges**, one-time and short-lived, in the runtime's state store (:data:`CHALLENGE_TTL`), under a
  key derived from the challenge itself in the tenant's domain; a ceremony consumes its challenge with the state
  store's atomic ``delete``, which answers True to exactly one caller on every driver, so a challenge serves
  once however many requests carry it;
* **registration**, the signed services ``passkey_options`` and ``add_passkey`` (a signed-in user adds a passkey
  to their own account), with ``passkeys``, ``rename_passkey`` and ``remove_passkey``;
* **login**, the protected routes ``/auth/passkey/options`` and ``/auth/passkey/login``: an attempt takes its
  place in its origin's abuse window like a password's (a failure weighs 1), and a verified assertion opens its
  session through :meth:`bastion_auth.login.Login.open_session`, as a password login does;
* the tenant's setting ``[auth] passkeys`` (``off``, ``allowed``, ``required``), read for the request's domain.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import options_to_json_dict, parse_authentication_credential_json, parse_client_data_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from bastion_auth import passkey_store, users
from bastion_auth.login import parse_public_key
from bastion_auth.passkey_store import MAX_PER_USER, is_name
from bastion_auth.sessions import Session
from kernel import (
    Abusive,
    BastionError,
    InvalidCall,
    InvalidCredential,
    NotFound,
    PasskeyRequired,
    RecordNotFound,
    Request,
    Routes,
    ValidationError,
    b64url,
    b64url_decode,
    current,
    loads,
    service,
)

if TYPE_CHECKING:
    from bastion_auth.core import Auth

OPTIONS_PATH = "/auth/passkey/options"
LOGIN_PATH = "/auth/passkey/login"

#: The values of ``[auth] passkeys``: no passkeys; passkeys beside passwords; and passwords refused to the users
#: who have a passkey.
MODES = ("off", "allowed", "required")
#: The values of ``[auth] passkey_user_verification``: whether the authenticator must verify its user (a PIN, a
#: fingerprint) at every ceremony, or may skip it (a passkey is then something one has, no more).
USER_VERIFICATION = ("required", "preferred")

#: Seconds a challenge lives: the ceremony's timeout (:data:`CEREMONY_TIMEOUT_MS`), and room for the round trips.
CHALLENGE_TTL = 180
#: How long the browser lets its user answer a ceremony, in milliseconds.
CEREMONY_TIMEOUT_MS = 120_000
#: The bytes of a challenge (from the CSPRNG).
CHALLENGE_BYTES = 32
#: The bytes of a new user handle (the ``user.id`` an authenticator keeps; never the username).
USER_HANDLE_BYTES = 32
#: The state key prefix of a challenge (followed by its b64url).
CHALLENGE_KEY = "passkey-challenge:"

#: The largest body of ``/auth/passkey/options``: ``{}`` or a username.
OPTIONS_MAX_BODY = 1024
#: The largest body of ``/auth/passkey/login``: an assertion (a credential id of up to 1,023 bytes twice, the
#: authenticator data, client data and a signature of an RSA key of 4,096 bits, each b64url) with room to spare.
LOGIN_MAX_BODY = 16384
#: The deepest nesting of a login body: ``{"credential": {"response": {...}, "clientExtensionResults": {...}}}``.
LOGIN_MAX_DEPTH = 4

#: The keys of a passkey login's body and their JSON types. ``credential`` is the assertion; every other key is
#: handed to :meth:`~bastion_auth.login.Login.open_session` as a keyword argument of the same name, as a
#: password login hands it the same keys of its own body.
PASSKEY_LOGIN_KEYS: Mapping[str, type] = {"credential": dict, "force": bool, "public_key": str}
#: The keys a passkey login's body must have.
PASSKEY_LOGIN_REQUIRED = frozenset({"credential"})


def parse_options_body(body: bytes) -> str | None:
    """``{}`` (or empty), or ``{"username": "alice"}``; return the username or None. InvalidCall otherwise."""
    if not body.strip():
        return None
    try:
        payload = loads(body, max_depth=1)
    except ValueError:
        raise InvalidCall("malformed JSON body") from None
    if not isinstance(payload, dict) or set(payload) - {"username"}:
        raise InvalidCall("the body is {} or {\"username\": ...}")
    username = payload.get("username")
    if username is not None and not isinstance(username, str):
        raise InvalidCall("'username' must be a string")
    return username


def parse_login_body(body: bytes) -> dict[str, Any]:
    """A passkey login's body: an object with exactly the keys of :data:`PASSKEY_LOGIN_KEYS` (those of
    :data:`PASSKEY_LOGIN_REQUIRED` present), each of its type; InvalidCall otherwise."""
    try:
        payload = loads(body, max_depth=LOGIN_MAX_DEPTH) if body.strip() else None
    except ValueError:
        raise InvalidCall("malformed JSON body") from None
    if not isinstance(payload, dict):
        raise InvalidCall("the body must be a JSON object with credential")
    extra = set(payload) - set(PASSKEY_LOGIN_KEYS)
    if extra:
        raise InvalidCall(f"unexpected key in body: {', '.join(sorted(extra))}")
    missing = PASSKEY_LOGIN_REQUIRED - set(payload)
    if missing:
        raise InvalidCall(f"missing key in body: {', '.join(sorted(missing))}")
    for key, kind in PASSKEY_LOGIN_KEYS.items():
        if key in payload and (not isinstance(payload[key], kind) or (kind is not bool and
                                                                       isinstance(payload[key], bool))):
            raise InvalidCall(f"'{key}' must be a {'boolean' if kind is bool else 'JSON ' + kind.__name__}")
    parse_public_key(payload)  # version 2 (docs/protocol.md section 16): a P-256 point, or InvalidCall
    return payload


def challenge_of(credential: Mapping[str, Any]) -> bytes:
    """The challenge a credential's client data answers (read with the library's parser); InvalidCall when the
    credential has no readable client data."""
    response = credential.get("response")
    client_data = response.get("clientDataJSON") if isinstance(response, dict) else None
    if not isinstance(client_data, str):
        raise InvalidCall("the credential has no response.clientDataJSON")
    try:
        return parse_client_data_json(b64url_decode(client_data)).challenge
    except (WebAuthnException, ValueError, TypeError):
        raise InvalidCall("the credential's clientDataJSON is not WebAuthn client data") from None


class Passkeys:
    """The passkeys of one runtime's auth plugin: its routes and services (its stores are the :class:`Auth`'s)."""

    def __init__(self, auth: Auth):
        self.auth = auth

    # -- the tenant ------------------------------------------------------------------------------

    def mode(self, domain: str) -> str:
        """``[auth] passkeys`` of the domain's tenant."""
        return self.auth.tenant(domain).settings.passkeys

    def _enabled(self, domain: str) -> None:
        if self.mode(domain) == "off":
            raise NotFound("passkeys are off in this domain")

    def _user_verification(self, domain: str) -> bool:
        return self.auth.tenant(domain).settings.passkey_user_verification == "required"

    def expected_origin(self, request: Request) -> str:
        """The origin a browser reports for this tenant's pages: ``https://<domain>`` in production; in
        development the request's own scheme and host (with its port), as ``make run`` serves them."""
        if self.auth.runtime.development:
            return f"{request.scheme}://{request.header('host') or request.domain}"
        return f"https://{request.domain}"

    # -- challenges --------------------------------------------------------------------------------

    def _new_challenge(self, domain: str, value: dict[str, Any]) -> bytes:
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        self.auth.state.set(domain, CHALLENGE_KEY + b64url(challenge), value, CHALLENGE_TTL)
        return challenge

    def _consume(self, domain: str, challenge: bytes) -> dict[str, Any] | None:
        """The state of a challenge this server issued, consumed: None when it never was, expired, or was
        consumed already. Of requests carrying one challenge, exactly one gets its state: the state store's
        ``delete`` answers True to one caller, atomically, on every driver."""
        key = CHALLENGE_KEY + b64url(challenge)
        value = self.auth.state.get(domain, key)
        if value is None or not self.auth.state.delete(domain, key):
            return None
        return value if isinstance(value, dict) else None

    # -- login: /auth/passkey/options and /auth/passkey/login ----------------------------------------

    def routes(self, routes: Routes) -> None:
        """Two protected routes, unsigned like ``/auth/login``, each with a small body limit of its own."""
        routes.post(OPTIONS_PATH, self.login_options, protected=True, max_body=OPTIONS_MAX_BODY)
        routes.post(LOGIN_PATH, self.login, protected=True, max_body=LOGIN_MAX_BODY)

    def login_options(self, request: Request) -> dict[str, Any]:
        """A login challenge: ``{"publicKey": <PublicKeyCredentialRequestOptions as JSON>}``.

        With a username (the username-first flow) the challenge serves only a passkey of that user; the answer
        is the same whether or not the user exists or has passkeys (no ``allowCredentials``: the browser offers
        the passkeys it holds for the domain), so that it tells nothing about the account.
        """
        domain = request.domain
        self._enabled(domain)
        username = parse_options_body(request.body)
        challenge = self._new_challenge(domain, {"purpose": "login", "username": username})
        options = generate_authentication_options(
            rp_id=domain, challenge=challenge, timeout=CEREMONY_TIMEOUT_MS,
            user_verification=(UserVerificationRequirement.REQUIRED if self._user_verification(domain)
                               else UserVerificationRequirement.PREFERRED))
        return {"publicKey": options_to_json_dict(options)}

    def login(self, request: Request) -> dict[str, Any]:
        """Verify an assertion against its challenge and its passkey; open a session as a password login does.

        In this order, stopping at the first failure: passkeys are not off in the domain (404 NotFound), the
        body is well formed (400 InvalidCall), the attempt takes its place in its origin's abuse window (429
        Abusive); then its challenge is consumed, its passkey found, the assertion verified and its counter
        stored, any failure of which is 401 InvalidCredential saying what failed and weighs 1 against the origin.
        """
        auth = self.auth
        domain, origin = request.domain, request.origin
        self._enabled(domain)
        body = parse_login_body(request.body)
        auth.login.check_version(request, None, body.get("public_key"))
        credential = body["credential"]
        challenge = challenge_of(credential)
        attempt = secrets.token_hex(8)
        try:
            auth.abuse.reserve(domain, origin, attempt, auth.clock())
        except Abusive as refused:
            if getattr(refused, "in_flight", False):
                auth.event("login_failed", None, logging.INFO, reason="in_progress", method="passkey", retry_after=1)
            raise
        try:
            username, passkey_id = self._verify(request, credential, challenge)
        except InvalidCredential as failure:
            auth.event("login_failed", getattr(failure, "user", None), logging.WARNING,
                       reason=getattr(failure, "reason", "invalid_credential"), method="passkey")
            auth.login._confirm(domain, origin, attempt, auth.clock())
            raise
        except BaseException:
            auth.abuse.release(domain, origin, attempt)
            raise
        auth.abuse.release(domain, origin, attempt)
        session_options = {key: value for key, value in body.items() if key != "credential"}

        def still_valid() -> bool:
            return users.find(username) is not None and passkey_store.find_by_id(username, passkey_id) is not None

        return auth.login.open_session(request, username, method="passkey", still_valid=still_valid,
                                       passkey=passkey_id, **session_options)

    def _verify(self, request: Request, credential: dict[str, Any], challenge: bytes) -> tuple[str, str]:
        """The username and passkey id of a verified assertion; InvalidCredential (with ``reason`` and
        ``user`` for the event) otherwise. Consumes the challenge and stores the passkey's new counter."""
        domain = request.domain
        state = self._consume(domain, challenge)
        if state is None or state.get("purpose") != "login":
            raise refusal("challenge", "the challenge is unknown, expired or already used; ask for a new one")
        try:
            parsed = parse_authentication_credential_json(credential)
        except (WebAuthnException, ValueError, TypeError):
            raise refusal("malformed", "the credential is not a WebAuthn assertion") from None
        record = passkey_store.find(parsed.raw_id)
        if record is None:
            raise refusal("unknown_passkey", "no such passkey in this domain (removed, or never registered here)")
        username = record.username
        bound = state.get("username")
        if bound is not None and bound != username:
            raise refusal("other_user", "this passkey is not the user's named for this challenge", username)
        handle = parsed.response.user_handle
        if handle is not None and b64url(handle) != record.user_handle:
            raise refusal("user_handle", "the passkey's user handle is not its user's", username)
        if users.find(username) is None:
            raise refusal("unknown_user", "no such passkey in this domain (its user was removed)", username)
        try:
            verified = verify_authentication_response(
                credential=parsed, expected_challenge=challenge, expected_rp_id=domain,
                expected_origin=self.expected_origin(request),
                credential_public_key=b64url_decode(record.public_key),
                credential_current_sign_count=record.sign_count,
                require_user_verification=self._user_verification(domain))
        except (WebAuthnException, ValueError, TypeError) as exc:
            raise refusal(*_why(str(exc)), username) from None
        self._count(record, verified.new_sign_count, username)
        return username, record._id

    def _count(self, record, new_count: int, username: str) -> None:
        """Store the counter the assertion carried, unless a concurrent login of the passkey stored one as high
        (a clone, or a replay: refused) or the passkey went meanwhile (refused)."""
        expected = record.sign_count
        for _ in range(5):
            if passkey_store.used(record._id, expected, new_count, self.auth.clock()):
                return
            current_record = passkey_store.find_by_id(username, record._id)
            if current_record is None:
                raise refusal("unknown_passkey", "no such passkey in this domain (removed, or never registered "
                              "here)", username)
            expected = current_record.sign_count
            if (new_count or expected) and new_count <= expected:
                raise refusal("counter", "the passkey's signature counter went backwards: it may have been cloned",
                              username)
        raise refusal("counter", "the passkey kept changing; try again", username)

    def refused(self, request: Request, error: BastionError) -> None:
        """Count a refused passkey login in ``bastion_logins_total`` by its outcome, as a password login's."""
        if request.path == LOGIN_PATH:
            from bastion_auth.login import LOGIN_OUTCOMES

            outcome = "in_progress" if getattr(error, "in_flight", False) else None
            self.auth.logins.inc(outcome or LOGIN_OUTCOMES.get(type(error), "refused"))

    def check_password_login(self, domain: str, username: str) -> None:
        """With ``[auth] passkeys = required``: a user who has a passkey may not log in with a password (403
        PasskeyRequired, told once the password verified, so that it tells nothing to whoever does not know it)."""
        if self.mode(domain) == "required" and passkey_store.count_of(username):
            self.auth.event("login_failed", username, logging.WARNING, reason="passkey_required")
            raise PasskeyRequired("this account logs in with a passkey")

    # -- registration and the user's passkeys: signed services ----------------------------------------

    def services(self) -> list:
        """The passkey services, bound to this runtime's plugin."""
        return [self.passkey_options, self.add_passkey, self.passkeys, self.rename_passkey, self.remove_passkey]

    @service
    def passkey_options(self) -> dict[str, Any]:
        """A registration challenge for the caller: ``{"publicKey": <PublicKeyCredentialCreationOptions as
        JSON>}``, its ``excludeCredentials`` the caller's passkeys (an authenticator holds one per account)."""
        request = current()
        session = _caller(request)
        domain, username = request.domain, session.username
        self._enabled(domain)
        existing = passkey_store.of_user(username)
        if len(existing) >= MAX_PER_USER:
            raise ValidationError({"passkeys": {"max_count": MAX_PER_USER}}, f"at most {MAX_PER_USER} passkeys")
        handle = existing[0].user_handle if existing else b64url(secrets.token_bytes(USER_HANDLE_BYTES))
        challenge = self._new_challenge(domain, {"purpose": "register", "username": username, "sid": session.sid,
                                                 "handle": handle})
        uv = self._user_verification(domain)
        options = generate_registration_options(
            rp_id=domain, rp_name=domain, user_name=username, user_display_name=username,
            user_id=b64url_decode(handle), challenge=challenge, timeout=CEREMONY_TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED, require_resident_key=True,
                user_verification=(UserVerificationRequirement.REQUIRED if uv
                                   else UserVerificationRequirement.PREFERRED)),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=b64url_decode(p.credential_id))
                                 for p in existing])
        return {"publicKey": options_to_json_dict(options)}

    @service
    def add_passkey(self, credential: dict, name: str = "Passkey") -> dict[str, Any]:
        """Verify the attestation of a ``passkey_options`` challenge of this session and store the passkey;
        return ``{"id", "name", "created", "last_used"}``."""
        request = current()
        session = _caller(request)
        domain, username = request.domain, session.username
        self._enabled(domain)
        if not is_name(name):
            raise ValidationError({"name": {"invalid": name}}, "a passkey's name has 1 to 64 characters")
        state = self._consume(domain, challenge_of(credential))
        if (state is None or state.get("purpose") != "register" or state.get("username") != username
                or state.get("sid") != session.sid):
            raise InvalidCredential("the challenge is unknown, expired or already used; ask for a new one")
        try:
            verified = verify_registration_response(
                credential=credential, expected_challenge=challenge_of(credential), expected_rp_id=domain,
                expected_origin=self.expected_origin(request),
                require_user_verification=self._user_verification(domain))
        except (WebAuthnException, ValueError, TypeError) as exc:
            reason, message = _why(str(exc))
            self.auth.event("passkey_register_failed", username, logging.WARNING, reason=reason)
            raise InvalidCredential(f"the passkey was not registered: {message}") from None
        if passkey_store.count_of(username) >= MAX_PER_USER:
            raise ValidationError({"passkeys": {"max_count": MAX_PER_USER}}, f"at most {MAX_PER_USER} passkeys")
        transports = credential.get("response", {}).get("transports")
        described = passkey_store.add(username, {
            "credential_id_bytes": verified.credential_id,
            "credential_id": b64url(verified.credential_id),
            "public_key": b64url(verified.credential_public_key),
            "sign_count": verified.sign_count,
            "user_handle": state["handle"],
            "name": name,
            "created": int(self.auth.clock()),
            "last_used": 0,
            "aaguid": str(verified.aaguid),
            "transports": [t for t in transports if isinstance(t, str)][:8] if isinstance(transports, list) else [],
        })
        if described is None:
            raise InvalidCredential("the passkey was not registered: this credential is registered already")
        self.auth.event("passkey_registered", username, passkey=described["id"][:8], origin=request.origin)
        return described

    @service
    def passkeys(self) -> dict[str, Any]:
        """The domain's ``[auth] passkeys`` and the caller's passkeys, oldest first: ``{"mode", "passkeys"}``,
        each passkey ``{"id", "name", "created", "last_used"}`` (never a key). Where passkeys are off, the mode
        says so and the list is empty: a page learns whether to offer them without being refused."""
        request = current()
        session = _caller(request)
        mode = self.mode(request.domain)
        records = passkey_store.of_user(session.username) if mode != "off" else []
        return {"mode": mode, "passkeys": [passkey_store.Passkey.to_dict(record) for record in records]}

    @service
    def rename_passkey(self, id: str, name: str) -> dict[str, Any]:
        """Rename one of the caller's passkeys; 404 RecordNotFound when the caller has no passkey of that id."""
        request = current()
        session = _caller(request)
        self._enabled(request.domain)
        if not is_name(name):
            raise ValidationError({"name": {"invalid": name}}, "a passkey's name has 1 to 64 characters")
        described = passkey_store.rename(session.username, id, name)
        if described is None:
            raise RecordNotFound("no such passkey")
        return described

    @service
    def remove_passkey(self, id: str) -> bool:
        """Remove one of the caller's passkeys, and end the other sessions it opened (a passkey is removed because
        its device may be lost); 404 RecordNotFound when the caller has no passkey of that id."""
        request = current()
        session = _caller(request)
        self._enabled(request.domain)
        if not passkey_store.remove(session.username, id):
            raise RecordNotFound("no such passkey")
        ended = self.auth.sessions.end_opened_with(request.domain, session.username, id, self.auth.clock(),
                                                   keep_sid=session.sid)
        self.auth.event("passkey_removed", session.username, passkey=id[:8], origin=request.origin,
                        by="remove_passkey", sessions_ended=ended)
        return True


def refusal(reason: str, message: str, user: str | None = None) -> InvalidCredential:
    """A refused passkey login: InvalidCredential with its message, and ``reason`` and ``user`` for its event."""
    error = InvalidCredential(message)
    error.reason = reason  # type: ignore[attr-defined]
    error.user = user  # type: ignore[attr-defined]
    return error


#: What the library's refusal names (any of the words, in its message), the reason for the event, and the answer's
#: message; tried in this order.
WHY: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("origin",), "origin", "the assertion was made for another origin"),
    (("rp id",), "rp_id", "the assertion was made for another domain (RP ID)"),
    (("sign count",), "counter", "the passkey's signature counter went backwards: it may have been cloned or replayed"),
    (("user verification", "user was not verified"), "user_verification", "the authenticator did not verify its user"),
    (("user was not present",), "user_presence", "the authenticator did not check its user's presence"),
    (("signature",), "signature", "the passkey's signature does not verify"),
    (("challenge",), "challenge", "the challenge is not this one"),
    (("type",), "type", "the client data is of another ceremony"),
)


def _why(message: str) -> tuple[str, str]:
    """The reason (for the event) and the message (for the answer) of the library's refusal."""
    lowered = message.lower()
    for words, reason, answer in WHY:
        if any(word in lowered for word in words):
            return reason, answer
    return "malformed", "the credential is not a valid WebAuthn response"


def _caller(request: Request) -> Session:
    """The session of the call: one of this plugin's, in the call's domain (else 403)."""
    from bastion_auth.services import caller

    return caller(request)
