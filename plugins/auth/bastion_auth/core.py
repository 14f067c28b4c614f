"""The auth plugin's state for one runtime, and the hooks it implements as that runtime's plugin object."""

from __future__ import annotations

import functools
import logging
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

from bastion_auth import events, users
from bastion_auth.abuse import Abuse, Accounts
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import UNREAD, Session, Sessions
from kernel import (
    Abusive,
    AccountLocked,
    Authentication,
    BastionError,
    Credentials,
    ExpiredSession,
    Forbidden,
    InvalidCall,
    InvalidCredential,
    InvalidSignature,
    MaxActiveSessions,
    ReplayedCall,
    Request,
    Routes,
    Runtime,
    ServiceUnavailable,
    Settings,
    StaleCall,
    StateStore,
    Unauthorized,
    UnknownSession,
    ValidationError,
    VersionConflict,
    b64url,
    current,
    hookimpl,
    loads,
    service,
)

log = logging.getLogger("bastion.auth")

LOGIN_PATH = "/auth/login"
LOGOUT_PATH = "/auth/logout"

#: The outcome of a refused login, for ``bastion_logins_total{outcome}``; any other refusal is ``refused``.
LOGIN_OUTCOMES: dict[type[BastionError], str] = {
    InvalidCredential: "invalid_credential",
    AccountLocked: "account_locked",
    Abusive: "banned",
    MaxActiveSessions: "max_sessions",
    InvalidCall: "invalid_call",
}

#: The security event of a refused signed call, and its level.
CALL_EVENTS: dict[type[BastionError], tuple[str, int]] = {
    InvalidSignature: ("bad_signature", logging.WARNING),
    ReplayedCall: ("replayed_call", logging.WARNING),
    StaleCall: ("stale_call", logging.INFO),
    ExpiredSession: ("session_expired", logging.INFO),
}

#: Seconds during which one worker's start-up message about the demo user stands for every worker's.
DEMO_BANNER_TTL = 30

#: The most bytes one character of a login body's strings can take: a character beyond the BMP written as
#: two ``\\uXXXX`` escapes (a client that escapes all non-ASCII text, as ``json.dumps`` does by default).
ESCAPED_CHARACTER = 12
#: Room in a login body besides its two strings: the keys, ``force``, spaces.
LOGIN_BODY_OVERHEAD = 1024
#: The largest logout body: the server hashes it and reads it no further; clients send ``{}`` or nothing.
LOGOUT_MAX_BODY = 1024


def login_max_body(max_password_length: int) -> int:
    """The largest login body (bytes): a username of 150 characters and a password of the longest length
    checked, every character escaped its longest way. A body over it is 413 before it is read, since its
    password could not be checked anyway; 15,112 bytes with the default ``max_password_length``."""
    return ESCAPED_CHARACTER * (users.MAX_USERNAME + max_password_length) + LOGIN_BODY_OVERHEAD


def sid_prefix(sid: str) -> str:
    """What logs and ``bastion sessions`` show of a session id: its first 8 characters, never the whole sid."""
    return sid[:8]


def demo_url(bind: str) -> str | None:
    """The address of the demo user's tenant for a ``[server] bind``: ``http://localhost:<port>/``."""
    if bind.startswith("unix:"):
        return None
    return f"http://localhost:{bind.rsplit(':', 1)[-1]}/"


@dataclass(frozen=True)
class SessionRead:
    """What step 3 read of a signed call's session, with the origin's ban: step 7 uses it instead of reading again."""

    sid: str
    stored: Any

    def __repr__(self) -> str:  # reprs end up in logs (BASTION_TRACE_PLUGINS): never the key or the whole sid
        return f"SessionRead({self.sid[:8]}…)"


class Auth:
    """Everything the plugin keeps for one runtime: registered with it in ``bastion_configure``.

    Its stores are built on first use from the runtime's state driver (open
    once the runtime is built), so that commands use them without starting
    the runtime.
    """

    def __init__(self, runtime: Runtime, settings: Settings, bootstrap: dict[str, str],
                 bootstrap_roles: dict[str, list[str]] | None = None):
        self.runtime = runtime
        self.settings = settings
        self.bootstrap = bootstrap
        #: ``[roles]``: ``username@domain`` (normalized) -> the roles it is given at every start.
        self.bootstrap_roles = bootstrap_roles or {}
        self.clock = runtime.clock
        self.passwords = Passwords(settings)
        self.skew = settings.skew
        # a nonce can pass while |now - ts| <= skew, and ts may lie up to skew ahead of now
        self.nonce_ttl = 2 * settings.skew + 1
        self.login_max_body = login_max_body(settings.max_password_length)

    @functools.cached_property
    def state(self) -> StateStore:
        """The runtime's state driver."""
        return self.runtime.state

    @functools.cached_property
    def sessions(self) -> Sessions:
        """Sessions in the state store."""
        return Sessions(self.state, self.settings)

    @functools.cached_property
    def abuse(self) -> Abuse:
        """Abuse weights and bans per origin."""
        return Abuse(self.state, self.settings)

    @functools.cached_property
    def accounts(self) -> Accounts:
        """Failed logins and locks per account."""
        return Accounts(self.state, self.settings)

    @functools.cached_property
    def logins(self):
        """``bastion_logins_total{outcome}``."""
        return self.runtime.metrics.counter("bastion_logins_total", "Login attempts, by outcome.", ("outcome",))

    def register_metrics(self) -> None:
        """The login counter, and the sessions gauge where the state driver counts keys cheaply."""
        self.logins  # noqa: B018 - registered now, so that a scrape shows it before the first login
        if "count_live" in getattr(self.runtime.state, "capabilities", ()):
            self.runtime.metrics.scrape_gauge(
                "bastion_sessions", "Sessions the state store holds: live ones, and those past their end for less "
                "than idle_timeout (remembered to answer ExpiredSession).",
                lambda: self.runtime.state.count_live(self.sessions.key("")))

    def event(self, name: str, user: str | None, level: int = logging.INFO, **fields: Any) -> None:
        """One security event (``bastion.security``) for the current request or command."""
        self.runtime.security_event(name, user=user, level=level, **fields)

    # -- hooks --------------------------------------------------------------

    @hookimpl
    def bastion_startup(self, runtime: Runtime) -> None:
        """Warm the dummy hash, create the ``[users]`` accounts, give the ``[roles]`` users their roles, and
        create the demo user in development."""
        self.passwords.warm()
        now = runtime.clock()
        for key, hashed in self.bootstrap.items():
            username, domain = users.split_key(key)
            with runtime.bind(domain):
                if users.create(username, hashed, now):
                    self.event("user_created", username, domain=domain, origin="[users]")
        for key, roles in self.bootstrap_roles.items():
            username, domain = users.split_key(key)
            with runtime.bind(domain):
                changed = users.set_roles(username, roles)
            if changed is None:
                log.warning("[roles] %s@%s: no such user; its roles are given once it exists and the server "
                            "starts again", username, domain)
            elif changed:
                events.roles_assigned(self.runtime, domain, username, roles, "[roles]")
        self.register_metrics()
        if runtime.development and self.settings.demo_user:
            self.demo_user(runtime, now)

    def demo_user(self, runtime: Runtime, now: float) -> None:
        """In development mode: create ``demo@localhost`` when no user exists, and say how to log in (once per start).

        The password is printed once, on the terminal of a development server,
        and never logged. At a later start (the data kept) the banner says how
        to reset it; of several workers starting together, one says so (the
        one that made the user, when one did).
        """
        url = demo_url(runtime.config.server.bind)
        where = f"at {url} " if url else ""
        tenant = ("  The tenant is the host name in the address bar: localhost. "
                  f"{url.replace('localhost', '127.0.0.1') if url else '127.0.0.1'} is another tenant, with no user.")
        if not runtime.records.domains(users.User.__model__):
            password = secrets.token_urlsafe(12)
            with runtime.bind("localhost", origin="[demo]"):
                if users.create("demo", self.passwords.hash(password), now):
                    self.event("user_created", "demo")
                    self.state.add("localhost", "demo:banner", 1, DEMO_BANNER_TTL)  # the others of this start: silent
                    print(f"\n  Development mode: log in {where}as demo / {password}\n{tenant}\n",
                          file=sys.stderr, flush=True)
            return
        with runtime.bind("localhost"):
            exists = users.find("demo") is not None
        if exists and self.state.add("localhost", "demo:banner", 1, DEMO_BANNER_TTL):
            print(f"\n  Development mode: log in {where}as demo (its password was printed when it was made).\n"
                  f"  Forgot it? bastion passwd demo --domain localhost\n{tenant}\n", file=sys.stderr, flush=True)

    @hookimpl
    def bastion_routes(self, routes: Routes) -> None:
        """``/auth/login`` (protected) and ``/auth/logout`` (protected and signed), each with the body limit
        its bodies need (a few hundred bytes), far below the server's: a client with no session cannot make
        the server read, hash or parse a mebibyte here."""
        routes.post("/auth/login", self.login, protected=True, max_body=self.login_max_body)
        routes.post("/auth/logout", lambda request: {"result": self.logout(request.session)}, protected=True,
                    signed=True, max_body=LOGOUT_MAX_BODY)

    @hookimpl
    def bastion_services(self) -> list:
        """The account services (docs/protocol.md section 5): ``change_password``, ``sessions``, ``end_sessions``."""
        auth = self

        @service
        def change_password(old: str, new: str) -> bool:
            """Change the caller's password (``old`` is checked like a login's); every other session ends."""
            return auth.change_password(current(), old, new)

        @service
        def sessions() -> list[dict]:
            """The caller's live sessions, oldest first, without keys or whole sids."""
            return auth.list_sessions(current())

        @service
        def end_sessions() -> int:
            """End the caller's other sessions; return how many were live."""
            return auth.end_other_sessions(current())

        return [change_password, sessions, end_sessions]

    @hookimpl
    def bastion_admit(self, request: Request, credentials: Credentials | None) -> SessionRead | None:
        """Step 3: the origin's ban, in one read with the session of a signed call, which step 7 then uses."""
        keys = [self.abuse.key(request.origin)] if self.abuse.enabled else []
        if credentials is not None:
            keys.append(self.sessions.key(credentials.sid))
        if not keys:
            return None
        values = self.state.get_many(request.domain, keys)
        if self.abuse.enabled:
            self.abuse.check(request.domain, request.origin, self.clock(), until=values[0])
        return SessionRead(credentials.sid, values[-1]) if credentials is not None else None

    @hookimpl
    def bastion_authenticate(self, request: Request, credentials: Credentials | None,
                             admissions: list) -> Authentication:
        """Steps 7 to 10 for ``/api/*`` and ``/auth/logout``."""
        return self.authenticate(request, credentials, admissions)

    @hookimpl
    def bastion_refused(self, request: Request, error: BastionError) -> None:
        """Weigh the refusal against the origin (a ban is a security event); count a refused login."""
        if request.path == LOGIN_PATH:
            outcome = "in_progress" if getattr(error, "in_flight", False) else None
            self.logins.inc(outcome or LOGIN_OUTCOMES.get(type(error), "refused"))
        if request.domain:
            banned = self.abuse.weigh(request.domain, request.origin, error, self.clock())
            if banned is not None:
                self.banned(banned)

    def banned(self, until: float) -> None:
        """The current request's origin reached the limit: one ``banned`` event."""
        self.event("banned", None, logging.WARNING, retry_after=max(1, round(until - self.clock())))

    # -- login ------------------------------------------------------------

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
        username, password, force = parse_login(request.body)
        domain, origin = request.domain, request.origin
        record, outdated = self.check_password(domain, origin, username, password, "invalid username or password")
        hashes = {record.password}
        if outdated:
            upgraded = self.passwords.context.hash(password)
            if users.set_password(username, upgraded, expected_hash=record.password):
                hashes.add(upgraded)
        now = self.clock()
        try:
            session = self.sessions.create(domain, username, now, force=force, origin=origin)
        except MaxActiveSessions:
            self.event("login_failed", username, logging.WARNING, reason="max_sessions")
            raise
        # Reserve, then check: a `bastion passwd` or `deluser` that ended the user's sessions just
        # before this one existed changed or removed the user first, which this read sees.
        if not self._still_valid(username, password, hashes):
            self._raced(domain, username, session.sid)
        # Last, the session itself: one that a change ended after the read above was ended after the password
        # was replaced, which a second read sees. (Ended by the user's own "sign out everywhere" or a forced
        # login, the password unchanged, it is answered: its first call learns UnknownSession, as theirs do.)
        if self.state.get(domain, self.sessions.key(session.sid)) is None and not self._still_valid(
                username, password, hashes):
            self._raced(domain, username, session.sid)
        self.logins.inc("success")
        self.event("login", username, session=sid_prefix(session.sid), forced=force or None,
                   rehashed=len(hashes) > 1 or None)
        return {
            "sid": session.sid,
            "key": b64url(session.key),
            "expires": int(session.expires),
            "server_time": now,
            "user": {"username": username, "domain": domain},
        }

    def _still_valid(self, username: str, password: str, hashes: set[str]) -> bool:
        """Whether the user still exists with a password this login verified.

        A hash that differs but still verifies is a concurrent login's upgrade of the same password.
        """
        current = users.find(username)
        return current is not None and (current.password in hashes or self.passwords.verify(password,
                                                                                             current.password)[0])

    def _raced(self, domain: str, username: str, sid: str) -> None:
        """The user changed or went while this login ran: end its session (no client holds it) and refuse."""
        self.sessions.end(domain, sid, username, mark=False)
        self.event("login_failed", username, logging.WARNING, reason="invalid_credential",
                   known_user=users.find(username) is not None)
        raise InvalidCredential("invalid username or password")

    def _confirm(self, domain: str, origin: str, attempt: str, now: float) -> None:
        """Keep a failed attempt's weight; the origin's ban, if it starts now, is a security event."""
        until = self.abuse.confirm(domain, origin, attempt, now)
        if until is not None:
            self.banned(until)

    def check_password(self, domain: str, origin: str, username: str, password: str, refusal: str,
                       attempt_of: str = "login"):
        """Check a user's password as one attempt against the limits; return ``(record, outdated)``.

        Every login, and every ``change_password`` (its ``old``), goes through
        here, so that both count alike: the attempt takes its place in its
        origin's abuse window (429 Abusive: banned, or too many attempts of
        the origin running) and is refused while its account is locked (429
        AccountLocked), before the password is checked; a failure keeps the
        origin's place as its weight and counts toward the account's lock
        (401 InvalidCredential, with ``refusal``); a success gives the place
        back, resets the account's count and takes back the weight of the
        account's earlier failures from this origin (a typo, then the right
        password, is no attack). An attempt whose account locked while its
        password was checked is told neither outcome: AccountLocked, weight 1,
        right or wrong (see :class:`~bastion_auth.abuse.Accounts`). A failure
        is a ``login_failed`` event (with ``attempt``: ``attempt_of``, when it
        is not a login), a lock an ``account_locked`` one, a ban a ``banned``
        one.
        """
        shown = username if users.is_username(username) else "(not a username)"  # the log never shows free text
        extra = {} if attempt_of == "login" else {"attempt": attempt_of}
        attempt = secrets.token_hex(8)
        try:
            self.abuse.reserve(domain, origin, attempt, self.clock())
        except Abusive as refused:
            if getattr(refused, "in_flight", False):
                self.event("login_failed", shown, logging.INFO, reason="in_progress", retry_after=1, **extra)
            raise
        try:
            self.accounts.check(domain, username, self.clock())
        except AccountLocked as locked:
            self._locked_attempt(domain, origin, attempt, shown, locked, extra)  # it weighs 1
            raise
        record = users.find(username)
        valid, outdated = self.passwords.verify(password, record.password if record is not None else None)
        now = self.clock()
        try:
            if valid:
                forgiven = self.accounts.succeeded(domain, username, now)
            else:
                locked_until = self.accounts.failed(domain, username, attempt, now)
        except AccountLocked as locked:  # locked while this password was checked: its outcome is not told
            self._locked_attempt(domain, origin, attempt, shown, locked, extra)
            raise
        if not valid:
            self.event("login_failed", shown, logging.WARNING, reason="invalid_credential",
                       known_user=record is not None, **extra)
            if locked_until is not None:
                self.event("account_locked", shown, logging.WARNING, retry_after=max(1, round(locked_until - now)),
                           failures=self.accounts.limit)
            self._confirm(domain, origin, attempt, now)
            if self.settings.dummy_delay:
                time.sleep(self.settings.dummy_delay)
            raise InvalidCredential(refusal)
        self.abuse.release(domain, origin, attempt)
        self.abuse.forgive(domain, origin, forgiven)
        return record, outdated

    def _locked_attempt(self, domain: str, origin: str, attempt: str, shown: str, locked: AccountLocked,
                        extra: dict[str, Any]) -> None:
        """An attempt answered AccountLocked: its ``login_failed`` event, and its weight of 1 for the origin."""
        self.event("login_failed", shown, logging.WARNING, reason="account_locked",
                   retry_after=locked.extra.get("retry_after"), **extra)
        self._confirm(domain, origin, attempt, self.clock())

    # -- account services (signed calls of the user on their own account) ----

    def _caller(self, request: Request) -> Session:
        """The session of the call: one of this plugin's, in the call's domain (else 403)."""
        session = request.session
        if not isinstance(session, Session) or session.domain != request.domain:
            raise Forbidden("the account services need a session of the auth plugin")
        return session

    def change_password(self, request: Request, old: str, new: str) -> bool:
        """Change the caller's password; every other session of the user ends, the calling one stays.

        The new password must follow the policy (422 ValidationError naming
        the rule, checked first: a mistyped new password costs no attempt);
        ``old`` is then checked exactly like a login's password (see
        :meth:`check_password`: 429 Abusive or AccountLocked, 401
        InvalidCredential). The hash is replaced only if it is still the one
        that verified (409 VersionConflict when a concurrent change won), and
        the other sessions end after it, so that a login racing the change
        with the old password sees the new hash or has its session ended.
        """
        session = self._caller(request)
        domain, username, origin = request.domain, session.username, request.origin
        broken = self.passwords.broken_rule(new)
        if broken is not None:
            rule, bound = broken
            words = "at least" if rule == "min_length" else "at most"
            raise ValidationError({"new": {rule: bound}}, f"a password has {words} {bound} characters")
        record, _ = self.check_password(domain, origin, username, old, "the current password is wrong",
                                        "change_password")
        if not users.set_password(username, self.passwords.context.hash(new), expected_hash=record.password):
            raise VersionConflict("the password was changed meanwhile; try again")
        ended = self.sessions.end_others(domain, username, session.sid, self.clock())
        events.password_changed(self.runtime, domain, username, origin, ended)
        return True

    def list_sessions(self, request: Request) -> list[dict[str, Any]]:
        """The caller's live sessions, oldest first: ``{"id", "created", "last_seen", "origin", "current"}`` each."""
        session = self._caller(request)
        return [live.describe(session.sid) for live in self.sessions.live(request.domain, session.username, self.clock())]

    def end_other_sessions(self, request: Request) -> int:
        """End every session of the caller but this one; return how many of them were live."""
        session = self._caller(request)
        ended = self.sessions.end_others(request.domain, session.username, session.sid, self.clock())
        events.sessions_ended(self.runtime, request.domain, session.username, request.origin, ended)
        return ended

    # -- signed calls -----------------------------------------------------

    def authenticate(self, request: Request, credentials: Credentials | None, admissions: list = ()) -> Authentication:
        """Steps 7 to 10 of docs/protocol.md section 4, once the body has arrived.

        Two round trips to the state store for a call: the origin's ban and the
        session in one read (step 3, :meth:`bastion_admit`, handed here in
        ``admissions``), then the nonce, recorded only while the session is
        still live, so that a call can never pass after a concurrent logout,
        however late its body arrived (plus a third when the idle expiry slides).
        """
        if credentials is None:
            raise Unauthorized("a signed Authorization header is required")
        sid = credentials.sid
        stored = next((a.stored for a in admissions if isinstance(a, SessionRead) and a.sid == sid), UNREAD)
        try:
            session = self.sessions.load(request.domain, sid, self.clock(), stored)
        except ExpiredSession as expired:
            self._call_event(expired, getattr(expired, "username", None), sid)
            raise
        except UnknownSession as unknown:
            # A read on the refusal's path only: a session this server ended is a late client (weight 0).
            try:
                unknown.ended = self.sessions.was_ended(request.domain, sid)  # type: ignore[attr-defined]
            except ServiceUnavailable:
                pass  # the refusal stands; unread, it weighs as the table says
            raise
        if not credentials.verify(session.key, request):
            error = InvalidSignature("the call's signature does not verify")
            self._call_event(error, session.username, sid)
            raise error
        now = self.clock()
        if abs(now - int(credentials.ts)) > self.skew:
            return self._refusal(session, StaleCall("the call's timestamp is outside the allowed skew", server_time=now),
                                 skew=round(now - int(credentials.ts)))
        nonce_key = f"nonce:{sid}:{credentials.nonce}"
        if not self.state.add(request.domain, nonce_key, 1, self.nonce_ttl, if_live=self.sessions.key(sid)):
            # Either the nonce was used, or the session ended since it was read: say which.
            try:
                self.sessions.load(request.domain, sid, self.clock())
            except BastionError as ended:
                ended.ended = True  # type: ignore[attr-defined]  # the session was live at step 7: no guess
                return self._refusal(session, ended)
            return self._refusal(session, ReplayedCall("this call was already made"))
        self.sessions.touch(session, now, request.origin)
        return Authentication(session, session.key)

    def _refusal(self, session: Session, error: BastionError, **fields: Any) -> Authentication:
        """A signed refusal, and its security event."""
        self._call_event(error, session.username, session.sid, **fields)
        return Authentication(session, session.key, error)

    def _call_event(self, error: BastionError, username: str | None, sid: str, **fields: Any) -> None:
        event = CALL_EVENTS.get(type(error))
        if event is not None:
            self.event(event[0], username, event[1], session=sid_prefix(sid), **fields)

    def logout(self, session: Session) -> bool:
        """End the session of a signed logout call (the kernel authenticated it)."""
        self.sessions.end(session.domain, session.sid, session.username)
        self.event("logout", session.username, session=sid_prefix(session.sid))
        return True


def parse_login(body: bytes) -> tuple[str, str, bool]:
    """Parse ``{"username", "password", "force"?}``; InvalidCall on any other shape.

    A login body is one flat object: a body holding any other array or object
    is refused from its bytes, before the parser builds anything.
    """
    try:
        payload = loads(body, max_depth=1) if body.strip() else None
    except ValueError:
        raise InvalidCall("malformed JSON body") from None
    if not isinstance(payload, dict):
        raise InvalidCall("the body must be a JSON object with username and password")
    extra = set(payload) - {"username", "password", "force"}
    if extra:
        raise InvalidCall(f"unexpected key in body: {', '.join(sorted(extra))}")
    username, password, force = payload.get("username"), payload.get("password"), payload.get("force", False)
    if not isinstance(username, str):
        raise InvalidCall("'username' must be a string")
    if not isinstance(password, str):
        raise InvalidCall("'password' must be a string")
    if not isinstance(force, bool):
        raise InvalidCall("'force' must be a boolean")
    return username, password, force
