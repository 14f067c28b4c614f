"""The exception tree of docs/protocol.md section 2: one class per ``exc`` name.

Nothing below the HTTP layer imports Falcon; code raises these, and exactly
one error handler (``kernel.http.app``) turns them into responses.
"""

from __future__ import annotations

import math
from typing import Any


class BastionError(Exception):
    """Base of every protocol error.

    ``exc`` is the wire name, ``status`` the HTTP status; ``err`` is the list
    of human-readable messages; ``extra`` holds keys such as ``fields``,
    ``retry_after`` or ``server_time`` that the body carries beside them.
    """

    status: int = 500
    default_message: str = "internal error"

    def __init__(self, *messages: str, headers: dict[str, str] | None = None, **extra: Any):
        self.err = [str(m) for m in messages] or [self.default_message]
        self.headers = dict(headers or {})
        self.extra = extra
        super().__init__("; ".join(self.err))

    @property
    def exc(self) -> str:
        """The wire name of the error: the class name."""
        return type(self).__name__

    def body(self) -> dict[str, Any]:
        """Return the docs/protocol.md section 2 body of this error."""
        return {"exc": self.exc, "err": list(self.err), **self.extra}


class _RetryAfter(BastionError):
    """An error that tells the client how long to wait (``retry_after``)."""

    default_retry_after = 1

    def __init__(self, *messages: str, retry_after: float | None = None, **extra: Any):
        seconds = self.default_retry_after if retry_after is None else retry_after
        seconds = max(1, math.ceil(seconds))
        super().__init__(*messages, headers={"Retry-After": str(seconds)}, retry_after=seconds, **extra)


class InvalidCall(BastionError):
    """400: malformed JSON, wrong body shape, query string, unbound arguments."""

    status = 400
    default_message = "invalid call"


class KeyAgreementRequired(BastionError):
    """400: a version-1 login (no ``public_key``) on a tenant that requires version 2."""

    status = 400
    default_message = "this server requires a version-2 login: send a public_key (key agreement)"


class EncryptionRequired(BastionError):
    """400: a plain call on a tenant that requires encrypted calls (signed: its MAC verified)."""

    status = 400
    default_message = "this server requires encrypted calls"


class InvalidCiphertext(BastionError):
    """400: a sealed call whose MAC verified but whose envelope does not open with the session's key."""

    status = 400
    default_message = "the encrypted body does not open with this session's key"


class InvalidHost(BastionError):
    """400: no Host header, several, or one outside the allowed hosts."""

    status = 400
    default_message = "invalid host"


class Unauthorized(BastionError):
    """401: a call without a well-formed Authorization header."""

    status = 401
    default_message = "authorization required"


class InvalidCredential(BastionError):
    """401: unknown user or wrong password (one body for both)."""

    status = 401
    default_message = "invalid username or password"


class SecondFactorRequired(BastionError):
    """401: the password is right, but the user has two-step sign-in and the login gave no code."""

    status = 401
    default_message = "a code from the authenticator app (or a recovery code) is required"


class UnknownSession(BastionError):
    """401: no such session in this domain."""

    status = 401
    default_message = "unknown session"


class ExpiredSession(BastionError):
    """401: the session timed out and the server still remembers it."""

    status = 401
    default_message = "session expired"


class InvalidSignature(BastionError):
    """401: the MAC does not verify."""

    status = 401
    default_message = "invalid signature"


class StaleCall(BastionError):
    """401: ``ts`` outside the allowed skew; the body carries ``server_time``."""

    status = 401
    default_message = "call timestamp outside the allowed skew"


class ReplayedCall(BastionError):
    """401: the nonce was already used in this session."""

    status = 401
    default_message = "nonce already used"


class Forbidden(BastionError):
    """403: the user may not call this service."""

    status = 403
    default_message = "forbidden"


class RequireSSL(BastionError):
    """403: production mode and the request did not arrive over HTTPS."""

    status = 403
    default_message = "HTTPS required"


class PasskeyRequired(BastionError):
    """403: a password login of a user who has a passkey, where the tenant requires passkeys for such users."""

    status = 403
    default_message = "this account logs in with a passkey"


class NotFound(BastionError):
    """404: no such service or route."""

    status = 404
    default_message = "not found"


class RecordNotFound(BastionError):
    """404: no such record in this domain."""

    status = 404
    default_message = "record not found"


class MethodNotAllowed(BastionError):
    """405: a method the route does not serve; ``Allow`` lists those it does."""

    status = 405
    default_message = "method not allowed"

    def __init__(self, allowed: list[str], *messages: str):
        super().__init__(*messages, headers={"Allow": ", ".join(allowed)})


class RequestTimeout(BastionError):
    """408: the request's headers or body did not arrive within the server's read timeouts."""

    status = 408
    default_message = "the request did not arrive in time"


class MaxActiveSessions(BastionError):
    """409: the user already has the allowed number of live sessions."""

    status = 409
    default_message = "too many active sessions"


class VersionConflict(BastionError):
    """409: the record's version is not the one the caller sent (or the id exists)."""

    status = 409
    default_message = "record changed"


class PayloadTooLarge(BastionError):
    """413: body over the configured limit."""

    status = 413
    default_message = "request body too large"


class UnsupportedMediaType(BastionError):
    """415: a non-empty POST body whose type is not application/json."""

    status = 415
    default_message = "request body must be application/json"


class ValidationError(BastionError):
    """422: a model rejected the data; ``fields`` says why."""

    status = 422
    default_message = "invalid data"

    def __init__(self, fields: dict[str, Any], *messages: str):
        super().__init__(*messages, fields=fields)

    @property
    def fields(self) -> dict[str, Any]:
        """Field -> rule -> offending value or reason."""
        return self.extra["fields"]


class Abusive(_RetryAfter):
    """429: the client origin is banned for abuse in this domain."""

    status = 429
    default_message = "too many bad requests from this address"


class AccountLocked(_RetryAfter):
    """429: too many failed logins for this account."""

    status = 429
    default_message = "account temporarily locked"


class Error(BastionError):
    """500: anything unexpected. Says nothing of its cause beyond a log id."""

    status = 500
    default_message = "internal error"


class ServiceUnavailable(_RetryAfter):
    """503: the storage backend cannot be reached (or cannot take writes).

    ``backend`` names the backend that failed (``sqlite``, ``postgresql``,
    ``redis``, ...) for ``bastion_storage_errors_total``; it is not part of the
    answer's body.
    """

    status = 503
    default_message = "storage unavailable"
    default_retry_after = 5

    def __init__(self, *messages: str, backend: str | None = None, retry_after: float | None = None, **extra: Any):
        super().__init__(*messages, retry_after=retry_after, **extra)
        self.backend = backend


#: Every protocol error class by its wire name.
BY_NAME: dict[str, type[BastionError]] = {
    cls.__name__: cls
    for cls in (
        InvalidCall, KeyAgreementRequired, EncryptionRequired, InvalidCiphertext, InvalidHost, Unauthorized,
        InvalidCredential, SecondFactorRequired, UnknownSession,
        ExpiredSession, InvalidSignature, StaleCall, ReplayedCall, Forbidden, RequireSSL, PasskeyRequired,
        NotFound, RecordNotFound, MethodNotAllowed, RequestTimeout, MaxActiveSessions, VersionConflict,
        PayloadTooLarge, UnsupportedMediaType, ValidationError, Abusive, AccountLocked,
        Error, ServiceUnavailable,
    )
}


class ConfigError(Exception):
    """A bad configuration: the message names file, section, key and what is accepted."""
