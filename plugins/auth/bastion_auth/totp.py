"""Two-step sign-in: time-based one-time codes (TOTP, RFC 6238) and recovery codes, for password logins.

A user enrols from their account (:class:`SecondFactor`'s services, docs/protocol.md section 5): a new
secret is kept *pending* on the user's record until a first valid code confirms it; the factor is then
*active*, and ten recovery codes are shown once, of which the record keeps only hashes. From then on a
password login of the user needs a ``code`` besides the password (docs/protocol.md section 3): a current
TOTP code, or one recovery code.

Each code works once. A TOTP code is accepted within one step (30 s) either side of the server's clock, and
the step it matched is recorded in the state store with ``add()`` (insert-if-absent, atomic on every driver)
keyed by the user and the step, for as long as the step can still be accepted: of two logins with one code,
the second is refused, however close they are. A recovery code is removed from the user's record in a
versioned unit of work: of two logins with one recovery code, one removes it and the other, which meets a
VersionConflict, reads the record again and no longer finds it.

The secret, pending or active, and the recovery hashes are fields of the user's record
(:class:`bastion_auth.users.User`): in the tenant's domain on every driver, exported with the tenant and
deleted with the user.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

import pyotp
import segno

from bastion_auth import users
from bastion_auth.services import caller
from kernel import Forbidden, InvalidCall, ValidationError, current, service

if TYPE_CHECKING:
    from bastion_auth.core import Auth

#: RFC 6238's defaults, those of every authenticator app: 30-second steps, 6 digits, HMAC-SHA1.
STEP = 30
DIGITS = 6
#: Steps accepted either side of the server's clock: a code typed as it changed, or a clock a little off.
WINDOW = 1
#: How long a used step is remembered: as long as it could still be accepted, and a step more.
USED_TTL = STEP * (2 * WINDOW + 2)
#: Recovery codes given at enrolment (and at each regeneration); each has 80 random bits.
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: they are read off paper
RECOVERY_LENGTH = 16
TOTP_CODE = re.compile(rf"[0-9]{{{DIGITS}}}")
RECOVERY_CODE = re.compile(rf"[{RECOVERY_ALPHABET}]{{{RECOVERY_LENGTH}}}")
#: The longest ``code`` a login or a service reads (a recovery code with its dashes and some spaces).
MAX_CODE_LENGTH = 64
#: ``[auth] second_factor``: off (no new enrolment), allowed (the default), required.
POLICIES = ("off", "allowed", "required")
#: What a session of a user who must enrol may still call while ``required``.
WHILE_ENROLLING = frozenset({"change_password", "sessions", "end_sessions", "totp_status", "totp_begin",
                             "totp_confirm", "totp_recovery_codes", "totp_disable", "permitted"})
#: The issuer shown in authenticator apps.
ISSUER = "Bastion"


def normalize(code: str) -> str:
    """A code as typed, without spaces and dashes, in capitals (recovery codes are shown ``ABCD-EFGH-...``)."""
    return re.sub(r"[\s-]", "", code).upper()


def new_secret() -> str:
    """A new TOTP secret: 160 random bits in base32 (RFC 4226's recommended length)."""
    return pyotp.random_base32(32)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step within the window whose code is ``code``, or None (compared in constant time)."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    current_step = int(now // STEP)
    found = None
    for step in range(current_step - WINDOW, current_step + WINDOW + 1):
        if hmac.compare_digest(totp.at(step * STEP), code):
            found = step
    return found


def code_at(secret: str, when: float) -> str:
    """The TOTP code of ``secret`` at a time (tests, and what an authenticator app shows)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).at(when)


def provisioning_uri(secret: str, username: str, domain: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(
        name=f"{username}@{domain}", issuer_name=f"{ISSUER} ({domain})")


def qr_data_uri(uri: str) -> str:
    """The URI as a QR code, an SVG ``data:`` URI (the static pages' CSP allows ``img-src data:``)."""
    return segno.make(uri, error="m").svg_data_uri(scale=4, border=2)


def new_recovery_codes() -> list[str]:
    """Ten recovery codes, ``ABCD-EFGH-JKLM-NPQR``: 16 symbols of 32, 80 random bits each."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        codes.append("-".join(raw[i:i + 4] for i in range(0, RECOVERY_LENGTH, 4)))
    return codes


def recovery_hash(domain: str, username: str, code: str) -> str:
    """What the record keeps of a recovery code: SHA-256 over the domain, the user and the normalized code.

    No slow hash is needed: a code has 80 random bits, far beyond any guessing, stolen hash or not (see
    docs/security.md); the domain and the user make one hash useless for any other account.
    """
    text = f"bastion-recovery\n{domain}\n{username}\n{normalize(code)}"
    return hashlib.sha256(text.encode()).hexdigest()


def used_key(username: str, secret: str, step: int) -> str:
    """The state key recording that a user's code of one time step was used (under that secret: a user who
    enrols again within the window gets codes of a new secret, which the old ones' steps do not refuse)."""
    who = hashlib.sha256(f"{username}\n{secret}".encode()).hexdigest()[:32]
    return f"totp-used:{who}:{step}"


def check_code_argument(code: Any) -> str:
    """A ``code`` argument: a string of at most :data:`MAX_CODE_LENGTH` characters (else InvalidCall)."""
    if not isinstance(code, str) or len(code) > MAX_CODE_LENGTH:
        raise InvalidCall(f"'code' must be a string of at most {MAX_CODE_LENGTH} characters")
    return code


class SecondFactor:
    """The second factor of one runtime's auth plugin: the code check of logins, and the enrolment services."""

    def __init__(self, auth: Auth):
        self.auth = auth

    # -- the check --------------------------------------------------------

    @staticmethod
    def active(record: Any) -> bool:
        """Whether a user's record has an active second factor."""
        return record is not None and bool(record.get("totp"))

    def verify(self, domain: str, username: str, record: Any, code: str) -> str | None:
        """Check a code of a user with an active factor and use it up; return what it was (``"totp"`` or
        ``"recovery"``), or None when it is wrong or was already used. Call it in the user's domain's
        storage scope (a login's, a service's)."""
        if not self.active(record):
            return None
        typed = normalize(code)
        if TOTP_CODE.fullmatch(typed):
            step = matching_step(record.totp, typed, self.auth.clock())
            if step is None:
                return None
            return "totp" if self.auth.state.add(domain, used_key(username, record.totp, step), 1, USED_TTL) else None
        if RECOVERY_CODE.fullmatch(typed):
            return "recovery" if users.use_recovery_code(username, recovery_hash(domain, username, typed)) else None
        return None

    def must_enrol(self, domain: str, record: Any) -> bool:
        """Whether the tenant requires a second factor and the user has none yet (sessions are then limited to
        :data:`WHILE_ENROLLING`)."""
        return self.auth.tenant(domain).settings.second_factor == "required" and not self.active(record)

    def allows(self, request: Any, service_name: str) -> bool | None:
        """Step 11 under ``second_factor = required``: a user without a second factor may call only what
        enrolling needs (False for the rest); None (no opinion) otherwise."""
        if not request.domain or self.auth.tenant(request.domain).settings.second_factor != "required":
            return None
        if service_name in WHILE_ENROLLING:
            return None
        session = request.session
        username = getattr(session, "username", None)
        if not isinstance(username, str):
            return None
        return False if not self.active(users.find(username)) else None

    # -- the services -------------------------------------------------------

    def all(self) -> list:
        """The enrolment services, as ``bastion_services`` returns them."""
        return [self.totp_status, self.totp_begin, self.totp_confirm, self.totp_recovery_codes, self.totp_disable]

    @service
    def totp_status(self) -> dict[str, Any]:
        """The caller's two-step sign-in: ``{"enabled", "pending", "recovery_codes", "policy"}``."""
        request = current()
        session = caller(request)
        record = users.find(session.username)
        return {
            "enabled": self.active(record),
            "pending": record is not None and bool(record.get("totp_pending")),
            "recovery_codes": len(record.get("recovery") or []) if self.active(record) else 0,
            "policy": self.auth.tenant(request.domain).settings.second_factor,
        }

    @service
    def totp_begin(self) -> dict[str, str]:
        """Start an enrolment: a new secret, kept pending until :meth:`totp_confirm`; return ``{"secret",
        "uri", "qr"}`` (``qr``: the ``otpauth://`` URI as an SVG ``data:`` URI). A pending enrolment is
        replaced. 403 when the tenant's ``second_factor`` is ``off``; 422 when a factor is active already."""
        request = current()
        session = caller(request)
        domain, username = request.domain, session.username
        if self.auth.tenant(domain).settings.second_factor == "off":
            raise Forbidden("two-step sign-in is turned off on this server")
        if self.active(users.find(username)):
            raise ValidationError({"totp": {"enabled": True}}, "two-step sign-in is on already; turn it off first")
        secret = new_secret()
        if not users.set_second_factor(username, totp_pending=secret):
            raise Forbidden("no such user")
        uri = provisioning_uri(secret, username, domain)
        return {"secret": secret, "uri": uri, "qr": qr_data_uri(uri)}

    @service
    def totp_confirm(self, code: str) -> list[str]:
        """Confirm a pending enrolment with a first valid code: the factor is active from now on; return the
        ten recovery codes, shown this once. 422 for a wrong (or used) code, or with no enrolment pending."""
        request = current()
        session = caller(request)
        domain, username = request.domain, session.username
        typed = normalize(check_code_argument(code))
        record = users.find(username)
        pending = record.get("totp_pending") if record is not None else ""
        if not pending:
            raise ValidationError({"code": {"pending": False}}, "no enrolment is pending: begin one first")
        step = matching_step(pending, typed, self.auth.clock()) if TOTP_CODE.fullmatch(typed) else None
        if step is None or not self.auth.state.add(domain, used_key(username, pending, step), 1, USED_TTL):
            raise ValidationError({"code": {"invalid": "wrong code"}}, "the code is wrong; type the app's current code")
        codes = new_recovery_codes()
        if not users.set_second_factor(username, expected_pending=pending, totp=pending, totp_pending="",
                                       recovery=[recovery_hash(domain, username, c) for c in codes]):
            raise ValidationError({"code": {"pending": False}}, "the enrolment changed meanwhile: begin again")
        self.auth.event("second_factor_enabled", username, logging.INFO, origin=request.origin)
        return codes

    @service
    def totp_recovery_codes(self, password: str | None = None, code: str | None = None) -> list[str]:
        """Replace the caller's recovery codes by ten new ones (returned, shown this once); the old ones stop
        working. Needs the password or a current code, checked as a login's (section 6 counts it)."""
        request = current()
        session = caller(request)
        username = session.username
        self._prove(request, username, password, code, "totp_recovery_codes")
        codes = new_recovery_codes()
        if not users.set_second_factor(username, require_active=True,
                                       recovery=[recovery_hash(request.domain, username, c) for c in codes]):
            raise ValidationError({"totp": {"enabled": False}}, "two-step sign-in is off")
        self.auth.event("recovery_codes_renewed", username, logging.INFO, origin=request.origin)
        return codes

    @service
    def totp_disable(self, password: str | None = None, code: str | None = None) -> bool:
        """Turn the caller's two-step sign-in off (a pending enrolment too); needs the password or a current code
        (or a recovery code), checked as a login's. True."""
        request = current()
        session = caller(request)
        username = session.username
        self._prove(request, username, password, code, "totp_disable")
        users.set_second_factor(username, totp="", totp_pending="", recovery=[])
        self.auth.event("second_factor_disabled", username, logging.WARNING, origin=request.origin,
                        by="totp_disable")
        return True

    def _prove(self, request: Any, username: str, password: str | None, code: str | None, attempt_of: str) -> None:
        """The caller proves it is the user again: exactly one of the password and a code, checked as one
        attempt against the limits (a wrong one counts like a wrong password)."""
        if (password is None) == (code is None):
            raise InvalidCall("give either the password or a code")
        login = self.auth.login
        if password is not None:
            if not isinstance(password, str):
                raise InvalidCall("'password' must be a string")
            login.check_password(request.domain, request.origin, username, password, "the password is wrong",
                                 attempt_of)
            return
        check_code_argument(code)
        if not self.active(users.find(username)):
            raise ValidationError({"totp": {"enabled": False}}, "two-step sign-in is off: give the password")
        login.check_code(request.domain, request.origin, username, str(code), "the code is wrong or was used",
                         attempt_of)
