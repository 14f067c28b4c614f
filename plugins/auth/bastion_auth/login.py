"""Logging in and out: ``/auth/login`` and ``/auth/logout`` (docs/protocol.md sections 3 and 5).

A login is one password check against the limits (:meth:`Login.check_password`, which ``change_password``
shares), then a session, then the answer; it counts in ``bastion_logins_total{outcome}``. A logout ends the
session of its signed call.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion_auth import totp, users
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import Session, sid_prefix
from kernel import (
    Abusive,
    AccountLocked,
    BastionError,
    InvalidCall,
    InvalidCredential,
    KeyAgreementRequired,
    MaxActiveSessions,
    Request,
    Routes,
    SecondFactorRequired,
    b64url,
    load_public,
    loads,
)

if TYPE_CHECKING:
    from bastion_auth.core import Auth

LOGIN_PATH = "/auth/login"
LOGOUT_PATH = "/auth/logout"

#: The outcome of a refused login, for ``bastion_logins_total{outcome}``; any other refusal is ``refused``.
LOGIN_OUTCOMES: dict[type[BastionError], str] = {
    InvalidCredential: "invalid_credential",
    AccountLocked: "account_locked",
    Abusive: "banned",
    MaxActiveSessions: "max_sessions",
    InvalidCall: "invalid_call",
    SecondFactorRequired: "second_factor_required",
}

#: The most bytes one character of a login body's strings can take: a character beyond the BMP written as
#: two ``\\uXXXX`` escapes (a client that escapes all non-ASCII text, as ``json.dumps`` does by default).
ESCAPED_CHARACTER = 12
#: Room in a login body besides its two strings: the keys, ``force``, spaces, and a ``code`` (at most 64
#: characters, 768 bytes escaped).
LOGIN_BODY_OVERHEAD = 1024
#: The largest logout body: clients send ``{}`` or nothing (:func:`parse_logout`).
LOGOUT_MAX_BODY = 1024


def login_max_body(max_password_length: int) -> int:
    """The largest login body (bytes): a username of 150 characters and a password of the longest length
    checked, every character escaped its longest way. A body over it is 413 before it is read, since its
    password could not be checked anyway; 15,112 bytes with the default ``max_password_length``."""
    return ESCAPED_CHARACTER * (users.MAX_USERNAME + max_password_length) + LOGIN_BODY_OVERHEAD


#: The refusals of an attempt whose password verified that count nothing and reset nothing (see
#: ``Login.check_password``), by the reason ``check`` gives: the level of their ``login_failed`` event, their error.
UNCOUNTED: dict[str, tuple[int, Callable[[], Exception]]] = {
    "second_factor_required": (logging.INFO, lambda: SecondFactorRequired(
        "a code is required: the one the authenticator app shows, or a recovery code")),
    "max_sessions": (logging.WARNING, lambda: MaxActiveSessions(
        "already the most active sessions allowed; log in with force to end them (the code was not used: it "
        "signs in again)")),
}

#: The keys of a password login's body.
LOGIN_KEYS = frozenset({"username", "password", "force", "code", "public_key"})


def parse_public_key(payload: dict[str, Any]) -> str | None:
    """A login body's ``public_key`` (version 2, docs/protocol.md section 16): None when absent, the key as sent
    when it is an uncompressed P-256 point in b64url; InvalidCall otherwise."""
    public_key = payload.get("public_key")
    if public_key is None and "public_key" not in payload:
        return None
    try:
        load_public(public_key)
    except ValueError as exc:
        raise InvalidCall(f"'public_key': {exc}") from None
    return public_key


def parse_login(body: bytes) -> tuple[str, str, bool, str | None, str | None]:
    """Parse ``{"username", "password", "force"?, "code"?, "public_key"?}``; InvalidCall on any other shape.

    ``code`` (None when absent) is the second factor: a TOTP code or a recovery code, a string of at most
    :data:`bastion_auth.totp.MAX_CODE_LENGTH` characters. ``public_key`` (None when absent) is the client's
    key of a version-2 login (:func:`parse_public_key`).

    A login body is one flat object: a body holding any other array or object
    is refused from its bytes, before the parser builds anything.
    """
    try:
        payload = loads(body, max_depth=1) if body.strip() else None
    except ValueError:
        raise InvalidCall("malformed JSON body") from None
    if not isinstance(payload, dict):
        raise InvalidCall("the body must be a JSON object with username and password")
    extra = set(payload) - LOGIN_KEYS
    if extra:
        raise InvalidCall(f"unexpected key in body: {', '.join(sorted(extra))}")
    username, password, force = payload.get("username"), payload.get("password"), payload.get("force", False)
    if not isinstance(username, str):
        raise InvalidCall("'username' must be a string")
    if not isinstance(password, str):
        raise InvalidCall("'password' must be a string")
    if not isinstance(force, bool):
        raise InvalidCall("'force' must be a boolean")
    code = totp.check_code_argument(payload["code"]) if "code" in payload else None
    return username, password, force, code, parse_public_key(payload)


def locking(refusal: str, retry_after: float) -> AccountLocked:
    """The answer of the wrong password that locks its account: AccountLocked, for as long as the lock lasts.

    The attempt is told the lock it set rather than a plain InvalidCredential, so that the person at the keyboard
    learns at once why the next attempt will be refused. It tells nothing a plain failure would not: it is a
    failure, counted and weighed as one, and locks are counted for usernames that do not exist too.
    ``locking`` marks it for ``bastion_logins_total``, where it counts as the ``invalid_credential`` it is.
    """
    error = AccountLocked(refusal, "too many failed logins for this account; try again later", retry_after=retry_after)
    error.locking = True  # type: ignore[attr-defined]
    return error


def parse_logout(body: bytes) -> None:
    """Check a logout body: empty (or only whitespace), or a call's body without arguments (``{}``,
    ``{"args": []}``, ``{"kwargs": {}}`` or both: a logout is signed exactly like a call, and takes none).
    Anything else is InvalidCall."""
    if not body.strip():
        return
    try:
        payload = loads(body)
    except ValueError:
        raise InvalidCall("malformed JSON body") from None
    if (not isinstance(payload, dict) or set(payload) - {"args", "kwargs"} or payload.get("args", []) != []
            or payload.get("kwargs", {}) != {}):
        raise InvalidCall("a logout takes no arguments: its body is empty or {}")


class Login:
    """The login and logout of one runtime's auth plugin (its stores, clock and events are the :class:`Auth`'s)."""

    def __init__(self, auth: Auth):
        self.auth = auth
        # One route for every tenant: its limit lets the longest password of any tenant through.
        self.max_body = login_max_body(auth.tenants.most("max_password_length"))

    def routes(self, routes: Routes) -> None:
        """``/auth/login`` (protected) and ``/auth/logout`` (protected and signed), each with the body limit
        its bodies need (a few hundred bytes), far below the server's: a client with no session cannot make
        the server read, hash or parse a mebibyte here."""
        routes.post(LOGIN_PATH, self.login, protected=True, max_body=self.max_body)
        routes.post(LOGOUT_PATH, self.logout_call, protected=True, signed=True, max_body=LOGOUT_MAX_BODY)

    def refused(self, request: Request, error: BastionError) -> None:
        """Count a refused login in ``bastion_logins_total`` by its outcome (``in_progress``: its origin's
        attempts were all running; the wrong password that locks its account is an ``invalid_credential``)."""
        if request.path == LOGIN_PATH:
            outcome = "in_progress" if getattr(error, "in_flight", False) else None
            outcome = "invalid_credential" if getattr(error, "locking", False) else outcome
            self.auth.logins.inc(outcome or LOGIN_OUTCOMES.get(type(error), "refused"))

    # -- the login --------------------------------------------------------

    def login(self, request: Request) -> dict[str, Any]:
        """Check a login body and credentials; open a session and return the docs/protocol.md answer.

        The password is checked as one attempt against the limits (see
        :meth:`check_password`). Then the session is stored, and the login
        reads the user again and, last, its own session: a password change
        (the user's, ``bastion passwd``) or a removal replaces the user first
        and ends its sessions second, so a login that verified the old
        password either reads the new user (InvalidCredential, its session
        ended) or finds its session already ended by them (InvalidCredential
        too), or answers before they end it, which they then do. No login
        answers 200 with a session it can tell has ended.
        """
        auth = self.auth
        username, password, force, code, public_key = parse_login(request.body)
        domain, origin = request.domain, request.origin
        self.check_version(request, username, public_key)
        record, outdated = self.check_password(domain, origin, username, password, "invalid username or password",
                                               code=code, second_factor=True, force=force)
        auth.passkeys.check_password_login(domain, username)  # [auth] passkeys = required
        passwords = auth.tenant(domain).passwords
        hashes = {record.password}
        if outdated:
            upgraded = auth.passwords.context.hash(password)
            if users.set_password(username, upgraded, expected_hash=record.password):
                hashes.add(upgraded)
        answer = self.open_session(request, username, force=force, rehashed=len(hashes) > 1, public_key=public_key,
                                   still_valid=lambda: self._still_valid(username, password, hashes, passwords))
        if auth.second.must_enrol(domain, record):
            # [auth] second_factor = required, and the user has none yet: this session may only enrol.
            answer["second_factor"] = "enrol"
        return answer

    def check_version(self, request: Request, username: str | None, public_key: str | None) -> None:
        """A version-1 login (no ``public_key``) where the tenant requires version 2 (``key_agreement`` or
        ``encryption`` required) is KeyAgreementRequired, before any credential is checked: an old client, not
        a guess, so it weighs nothing."""
        settings = self.auth.tenant(request.domain).settings
        if public_key is None and "required" in (settings.key_agreement, settings.encryption):
            shown = None if username is None else username if users.is_username(username) else "(not a username)"
            self.auth.event("login_failed", shown, logging.INFO, reason="key_agreement_required")
            raise KeyAgreementRequired("this server requires a version-2 login: send a public_key "
                                       "(docs/protocol.md section 16)")

    def open_session(self, request: Request, username: str, *, force: bool = False, rehashed: bool = False,
                     still_valid: Callable[[], bool] = lambda: True, method: str | None = None,
                     public_key: str | None = None, passkey: str | None = None) -> dict[str, Any]:
        """Open a session for a user whose credentials were just verified, and return the login answer.

        Every way of logging in ends here, so that each answers alike: the
        same session, the same ``max_active_sessions``, the same events.
        ``still_valid`` says whether the credentials the login verified still
        hold (read again once the session is stored: see :meth:`login`);
        ``method`` names a login other than the password's in its event.
        ``public_key``: the client's, for a version-2 login (docs/protocol.md
        section 16): the session's keys are agreed, and the answer carries the
        server's public key instead of a key. ``passkey``: the id of the passkey of a passkey login (removing it
        ends the session).
        """
        auth = self.auth
        domain, origin = request.domain, request.origin
        now = auth.clock()
        try:
            session = auth.sessions.create(domain, username, now, force=force, origin=origin,
                                           client_public=public_key, passkey=passkey)
        except MaxActiveSessions:
            auth.event("login_failed", username, logging.WARNING, reason="max_sessions", method=method)
            raise
        # Reserve, then check: a `bastion passwd` or `deluser` that ended the user's sessions just
        # before this one existed changed or removed the user first, which this read sees.
        if not still_valid():
            self._raced(domain, username, session.sid)
        # Last, the session itself: one that a change ended after the read above was ended after the password
        # was replaced, which a second read sees. (Ended by the user's own "sign out everywhere" or a forced
        # login, the password unchanged, it is answered: its first call learns UnknownSession, as theirs do.)
        if auth.state.get(domain, auth.sessions.key(session.sid)) is None and not still_valid():
            self._raced(domain, username, session.sid)
        auth.logins.inc("success")
        auth.event("login", username, session=sid_prefix(session.sid), forced=force or None,
                   rehashed=rehashed or None, method=method, version=session.version)
        answer: dict[str, Any] = {"sid": session.sid}
        if session.public is not None:
            answer.update(version=session.version, public_key=session.public)
        else:
            answer["key"] = b64url(session.key)
        answer.update(expires=int(session.expires), server_time=now, user={"username": username, "domain": domain},
                      limits=self.limits(domain))
        return answer

    def limits(self, domain: str) -> dict[str, int]:
        """The bounds a client meets in the session it just opened (docs/protocol.md section 3), its tenant's: told
        at login, so that no client learns them by being refused."""
        settings = self.auth.tenant(domain).settings
        return {"skew": settings.skew, "idle_timeout": settings.idle_timeout,
                "absolute_timeout": settings.absolute_timeout, "max_body": self.auth.runtime.config.bastion.max_body}

    def _still_valid(self, username: str, password: str, hashes: set[str], passwords: Passwords) -> bool:
        """Whether the user still exists with a password this login verified (under its tenant's ``passwords``).

        A hash that differs but still verifies is a concurrent login's upgrade of the same password.
        """
        current = users.find(username)
        return current is not None and (current.password in hashes or passwords.verify(
            password, current.password)[0])

    def _raced(self, domain: str, username: str, sid: str) -> None:
        """The user changed or went while this login ran: end its session (no client holds it) and refuse."""
        self.auth.sessions.end(domain, sid, username, mark=False)
        self.auth.event("login_failed", username, logging.WARNING, reason="invalid_credential",
                        known_user=users.find(username) is not None)
        raise InvalidCredential("invalid username or password")

    # -- one password checked against the limits ---------------------------

    def check_password(self, domain: str, origin: str, username: str, password: str, refusal: str,
                       attempt_of: str = "login", *, code: str | None = None, second_factor: bool = False,
                       force: bool = False):
        """Check a user's password as one attempt against the limits; return ``(record, outdated)``.

        Every login, and every ``change_password`` (its ``old``), goes through
        here, so that both count alike: the attempt takes its place in its
        origin's abuse window (429 Abusive: banned, or too many attempts of
        the origin running) and is refused while its account is locked (429
        AccountLocked), before the password is checked; a failure keeps the
        origin's place as its weight and counts toward the account's lock
        (401 InvalidCredential, with ``refusal``; the failure that locks the
        account answers the lock it set: 429 AccountLocked, with ``refusal``
        and ``retry_after`` the lock's length); a success gives the place
        back, resets the account's count and takes back the weight of the
        account's earlier failures from this origin (a typo, then the right
        password, is no attack). An attempt whose account locked while its
        password was checked is told neither outcome: AccountLocked, weight 1,
        right or wrong (see :class:`~bastion_auth.abuse.Accounts`). A failure
        is a ``login_failed`` event (with ``attempt``: ``attempt_of``, when it
        is not a login), a lock an ``account_locked`` one, a ban a ``banned``
        one.

        With ``second_factor`` (a login), a user with two-step sign-in also
        needs ``code``, checked once the password verified
        (:mod:`bastion_auth.totp`): a wrong or used code is a failure exactly
        like a wrong password (reason ``invalid_code``; 401 InvalidCredential,
        "invalid or already used code"); no code at all is 401
        SecondFactorRequired, which neither counts as a failure nor resets
        the account's count (only the whole login does), and gives the
        origin's place back. A user at ``max_active_sessions`` (and no
        ``force``) is told 409 MaxActiveSessions once the password verified
        and before the code is checked, which counts and resets nothing
        either: a code is used up only by a login that goes on to open its
        session, so the same code signs in again with ``force``. (The
        session's own reserve-then-check still decides: a login that passed
        this read is refused if another took the last place meanwhile.)
        """
        tenant = self.auth.tenant(domain)

        def check(record: Any) -> tuple[bool, bool, str]:
            valid, outdated = tenant.passwords.verify(password, record.password if record is not None else None)
            if not valid or not second_factor or not self.auth.second.active(record):
                return valid, outdated, "invalid_credential"
            if code is None:
                return False, outdated, "second_factor_required"
            if not force and self.auth.sessions.at_limit(domain, username, self.auth.clock()) is not None:
                return False, outdated, "max_sessions"
            used = self.auth.second.verify(domain, username, record, code)
            return used is not None, outdated, "invalid_code"

        return self._attempt(domain, origin, username, check, refusal, attempt_of)

    def check_code(self, domain: str, origin: str, username: str, code: str, refusal: str, attempt_of: str):
        """Check a code of a user with two-step sign-in (a TOTP code or a recovery code, used up) as one attempt
        against the limits, exactly as :meth:`check_password` checks a password; return the user's record."""

        def check(record: Any) -> tuple[bool, bool, str]:
            return self.auth.second.verify(domain, username, record, code) is not None, False, "invalid_code"

        return self._attempt(domain, origin, username, check, refusal, attempt_of)[0]

    def _attempt(self, domain: str, origin: str, username: str, check: Callable[[Any], tuple[bool, bool, str]],
                 refusal: str, attempt_of: str):
        """One attempt against the limits (see :meth:`check_password`): ``check(record)`` says whether the
        secrets verify, whether the hash is outdated, and the reason of a refusal."""
        auth = self.auth
        shown = username if users.is_username(username) else "(not a username)"  # the log never shows free text
        extra = {} if attempt_of == "login" else {"attempt": attempt_of}
        attempt = secrets.token_hex(8)
        try:
            auth.abuse.reserve(domain, origin, attempt, auth.clock())
        except Abusive as refused:
            if getattr(refused, "in_flight", False):
                auth.event("login_failed", shown, logging.INFO, reason="in_progress", retry_after=1, **extra)
            raise
        try:
            auth.accounts.check(domain, username, auth.clock())
        except AccountLocked as locked:
            self._locked_attempt(domain, origin, attempt, shown, locked, extra)  # it weighs 1
            raise
        record = users.find(username)
        valid, outdated, reason = check(record)
        now = auth.clock()
        try:
            if reason in UNCOUNTED:
                auth.accounts.check_open(domain, username, now)  # told only while the account is not locked
            elif valid:
                forgiven = auth.accounts.succeeded(domain, username, now)
            else:
                locked_until = auth.accounts.failed(domain, username, attempt, now)
        except AccountLocked as locked:  # locked while this password was checked: its outcome is not told
            self._locked_attempt(domain, origin, attempt, shown, locked, extra)
            raise
        if reason in UNCOUNTED:
            level, error_of = UNCOUNTED[reason]
            auth.abuse.release(domain, origin, attempt)
            auth.event("login_failed", shown, level, reason=reason, **extra)
            raise error_of()
        if not valid:
            if reason == "invalid_code":
                refusal = "invalid or already used code"
            self._failed(domain, origin, attempt, shown, record is not None, locked_until, now, extra, reason)
            raise InvalidCredential(refusal) if locked_until is None else locking(refusal, locked_until - now)
        auth.abuse.release(domain, origin, attempt)
        auth.abuse.forgive(domain, origin, forgiven)
        return record, outdated

    def _failed(self, domain: str, origin: str, attempt: str, shown: str, known_user: bool,
                locked_until: float | None, now: float, extra: dict[str, Any],
                reason: str = "invalid_credential") -> None:
        """A wrong password (or code): its ``login_failed`` event (and ``account_locked`` when it locks the
        account), its weight of 1 for the origin, and the dummy delay."""
        auth = self.auth
        settings = auth.tenant(domain).settings
        auth.event("login_failed", shown, logging.WARNING, reason=reason, known_user=known_user, **extra)
        if locked_until is not None:
            auth.event("account_locked", shown, logging.WARNING, retry_after=max(1, round(locked_until - now)),
                       failures=settings.account_max_failures)
        self._confirm(domain, origin, attempt, now)
        if settings.dummy_delay:
            time.sleep(settings.dummy_delay)

    def _confirm(self, domain: str, origin: str, attempt: str, now: float) -> None:
        """Keep a failed attempt's weight; the origin's ban, if it starts now, is a security event."""
        until = self.auth.abuse.confirm(domain, origin, attempt, now)
        if until is not None:
            self.auth.banned(until)

    def _locked_attempt(self, domain: str, origin: str, attempt: str, shown: str, locked: AccountLocked,
                        extra: dict[str, Any]) -> None:
        """An attempt answered AccountLocked: its ``login_failed`` event, and its weight of 1 for the origin."""
        self.auth.event("login_failed", shown, logging.WARNING, reason="account_locked",
                        retry_after=locked.extra.get("retry_after"), **extra)
        self._confirm(domain, origin, attempt, self.auth.clock())

    # -- the logout -------------------------------------------------------

    def logout_call(self, request: Request) -> dict[str, Any]:
        """``/auth/logout``: a body with no arguments, then the session ended (a refused body ends nothing)."""
        parse_logout(request.body)
        return {"result": self.logout(request.session)}

    def logout(self, session: Session) -> bool:
        """End the session of a signed logout call (the kernel authenticated it)."""
        self.auth.sessions.end(session.domain, session.sid, session.username)
        self.auth.event("logout", session.username, session=sid_prefix(session.sid))
        return True
