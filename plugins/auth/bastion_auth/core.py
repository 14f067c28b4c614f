"""The auth plugin's state for one runtime, and the hooks it implements as that runtime's plugin object."""

from __future__ import annotations

import functools
import logging
import secrets
import sys
import time
from typing import Any

from bastion_auth import users
from bastion_auth.abuse import Abuse, Accounts
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import Session, Sessions
from kernel import (
    Abusive,
    AccountLocked,
    Authentication,
    BastionError,
    Credentials,
    ExpiredSession,
    InvalidCall,
    InvalidCredential,
    InvalidSignature,
    MaxActiveSessions,
    ReplayedCall,
    Request,
    Routes,
    Runtime,
    Settings,
    StaleCall,
    StateStore,
    Unauthorized,
    b64url,
    hookimpl,
    loads,
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


def sid_prefix(sid: str) -> str:
    """What logs and ``bastion sessions`` show of a session id: its first 8 characters, never the whole sid."""
    return sid[:8]


def demo_url(bind: str) -> str | None:
    """The address of the demo user's tenant for a ``[server] bind``: ``http://localhost:<port>/``."""
    if bind.startswith("unix:"):
        return None
    return f"http://localhost:{bind.rsplit(':', 1)[-1]}/"


class Auth:
    """Everything the plugin keeps for one runtime: registered with it in ``bastion_configure``.

    Its stores are built on first use from the runtime's state driver (open
    once the runtime is built), so that commands use them without starting
    the runtime.
    """

    def __init__(self, runtime: Runtime, settings: Settings, bootstrap: dict[str, str]):
        self.runtime = runtime
        self.settings = settings
        self.bootstrap = bootstrap
        self.clock = runtime.clock
        self.passwords = Passwords(settings)
        self.skew = settings.skew
        # a nonce can pass while |now - ts| <= skew, and ts may lie up to skew ahead of now
        self.nonce_ttl = 2 * settings.skew + 1

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
        """Warm the dummy hash, create the ``[users]`` accounts, and the demo user in development."""
        self.passwords.warm()
        now = runtime.clock()
        for key, hashed in self.bootstrap.items():
            username, domain = users.split_key(key)
            with runtime.bind(domain):
                if users.create(username, hashed, now):
                    self.event("user_created", username, domain=domain, origin="[users]")
        self.register_metrics()
        if runtime.development and self.settings.demo_user:
            self.demo_user(runtime, now)

    def demo_user(self, runtime: Runtime, now: float) -> None:
        """In development mode: create ``demo@localhost`` when no user exists, and say how to log in (once per start).

        The password is printed once, on the terminal of a development server,
        and never logged. At a later start (the data kept) the banner says how
        to reset it; of several workers starting together, one says so.
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
        """``/auth/login`` (protected) and ``/auth/logout`` (protected and signed)."""
        routes.post("/auth/login", self.login, protected=True)
        routes.post("/auth/logout", lambda request: {"result": self.logout(request.session)}, protected=True,
                    signed=True)

    @hookimpl
    def bastion_admit(self, request: Request) -> None:
        """Step 3 for a request that is not a signed call (or a call refused at step 4 or 5): one read."""
        if self.abuse.enabled:
            self.abuse.check(request.domain, request.origin, self.clock())

    @hookimpl
    def bastion_authenticate(self, request: Request, credentials: Credentials | None) -> Authentication:
        """Steps 3 and 6 to 10 for ``/api/*`` and ``/auth/logout``."""
        return self.authenticate(request, credentials)

    @hookimpl
    def bastion_refused(self, request: Request, error: BastionError) -> None:
        """Weigh the refusal against the origin (a ban is a security event); count a refused login."""
        if request.path == LOGIN_PATH:
            self.logins.inc(LOGIN_OUTCOMES.get(type(error), "refused"))
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

        Every limit is reserved before the password is checked, atomically in
        the state store, so that concurrent attempts can never check more
        passwords than the limits allow: the attempt first takes a place in
        its origin's abuse window (a banned origin is refused there), then in
        its account's window (a locked account is refused there). A failure
        keeps both places as the failure's weight; a success gives them back.
        """
        username, password, force = parse_login(request.body)
        domain, origin = request.domain, request.origin
        shown = username if users.is_username(username) else "(not a username)"  # the log never shows free text
        attempt = secrets.token_hex(8)
        self.abuse.reserve(domain, origin, attempt, self.clock())
        try:
            self.accounts.reserve(domain, username, attempt, self.clock())
        except AccountLocked as locked:
            self.event("login_failed", shown, logging.WARNING, reason="account_locked",
                       retry_after=locked.extra.get("retry_after"))
            self._confirm(domain, origin, attempt, self.clock())  # a login attempt on a locked account weighs 1
            raise
        record = users.find(username)
        valid, outdated = self.passwords.verify(password, record.password if record is not None else None)
        if not valid:
            now = self.clock()
            locked_until = self.accounts.failed(domain, username, attempt, now)
            self.event("login_failed", shown, logging.WARNING, reason="invalid_credential",
                       known_user=record is not None)
            if locked_until is not None:
                self.event("account_locked", shown, logging.WARNING, retry_after=max(1, round(locked_until - now)),
                           failures=self.accounts.limit)
            self._confirm(domain, origin, attempt, now)
            if self.settings.dummy_delay:
                time.sleep(self.settings.dummy_delay)
            raise InvalidCredential("invalid username or password")
        self.abuse.release(domain, origin, attempt)
        self.accounts.succeeded(domain, username)
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
        current = users.find(username)
        if current is None or (current.password not in hashes and not self.passwords.verify(password, current.password)[0]):
            # (A hash that differs but still verifies is a concurrent login's upgrade of the same password.)
            self.sessions.end(domain, session.sid, username)
            self.event("login_failed", username, logging.WARNING, reason="invalid_credential", known_user=current is not None)
            raise InvalidCredential("invalid username or password")
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

    def _confirm(self, domain: str, origin: str, attempt: str, now: float) -> None:
        """Keep a failed attempt's weight; the origin's ban, if it starts now, is a security event."""
        until = self.abuse.confirm(domain, origin, attempt, now)
        if until is not None:
            self.banned(until)

    # -- signed calls -----------------------------------------------------

    def authenticate(self, request: Request, credentials: Credentials | None) -> Authentication:
        """Steps 3 and 6 to 10 of docs/protocol.md section 4, once the body has arrived.

        Two round trips to the state store: the origin's ban and the session
        in one read, then the nonce, recorded only while the session is still
        live, so that a call can never pass after a concurrent logout, however
        late its body arrived (plus a third when the idle expiry slides).
        """
        keys = [self.abuse.key(request.origin)] if self.abuse.enabled else []
        if credentials is not None:
            keys.append(self.sessions.key(credentials.sid))
        values = self.state.get_many(request.domain, keys) if keys else []
        if self.abuse.enabled:
            self.abuse.check(request.domain, request.origin, self.clock(), until=values[0])
        if credentials is None:
            raise Unauthorized("a signed Authorization header is required")
        sid = credentials.sid
        try:
            session = self.sessions.load(request.domain, sid, self.clock(), values[-1])
        except ExpiredSession as expired:
            self._call_event(expired, getattr(expired, "username", None), sid)
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
                return self._refusal(session, ended)
            return self._refusal(session, ReplayedCall("this call was already made"))
        self.sessions.touch(session, now)
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
    """Parse ``{"username", "password", "force"?}``; InvalidCall on any other shape."""
    try:
        payload = loads(body) if body.strip() else None
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
