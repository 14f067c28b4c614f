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
    AccountLocked,
    Authentication,
    BastionError,
    Credentials,
    InvalidCall,
    InvalidCredential,
    InvalidSignature,
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
                    log.info("created user %s@%s from [users]", username, domain)
        if runtime.development and self.settings.demo_user and not runtime.records.domains(users.User.__model__):
            password = secrets.token_urlsafe(12)
            with runtime.bind("localhost"):
                if users.create("demo", self.passwords.hash(password), now):
                    # Shown once, on the terminal of a development server only; never logged.
                    print(f"\n  Development mode: log in at http://localhost:9000/ as demo / {password}\n",
                          file=sys.stderr, flush=True)

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
        """Weigh the refusal against the origin."""
        if request.domain:
            self.abuse.weigh(request.domain, request.origin, error, self.clock())

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
        attempt = secrets.token_hex(8)
        self.abuse.reserve(domain, origin, attempt, self.clock())
        try:
            self.accounts.reserve(domain, username, attempt, self.clock())
        except AccountLocked:
            self.abuse.confirm(domain, origin, attempt, self.clock())  # a login attempt on a locked account weighs 1
            raise
        record = users.find(username)
        valid, outdated = self.passwords.verify(password, record.password if record is not None else None)
        if not valid:
            now = self.clock()
            self.accounts.failed(domain, username, attempt, now)
            self.abuse.confirm(domain, origin, attempt, now)
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
        session = self.sessions.create(domain, username, now, force=force)
        # Reserve, then check: a `bastion passwd` or `deluser` that ended the user's sessions just
        # before this one existed changed or removed the user first, which this read sees.
        current = users.find(username)
        if current is None or (current.password not in hashes and not self.passwords.verify(password, current.password)[0]):
            # (A hash that differs but still verifies is a concurrent login's upgrade of the same password.)
            self.sessions.end(domain, session.sid, username)
            raise InvalidCredential("invalid username or password")
        return {
            "sid": session.sid,
            "key": b64url(session.key),
            "expires": int(session.expires),
            "server_time": now,
            "user": {"username": username, "domain": domain},
        }

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
        session = self.sessions.load(request.domain, sid, self.clock(), values[-1])
        if not credentials.verify(session.key, request):
            raise InvalidSignature("the call's signature does not verify")
        now = self.clock()
        if abs(now - int(credentials.ts)) > self.skew:
            return Authentication(session, session.key, StaleCall("the call's timestamp is outside the allowed skew",
                                                                  server_time=now))
        nonce_key = f"nonce:{sid}:{credentials.nonce}"
        if not self.state.add(request.domain, nonce_key, 1, self.nonce_ttl, if_live=self.sessions.key(sid)):
            # Either the nonce was used, or the session ended since it was read: say which.
            try:
                self.sessions.load(request.domain, sid, self.clock())
            except BastionError as ended:
                return Authentication(session, session.key, ended)
            return Authentication(session, session.key, ReplayedCall("this call was already made"))
        self.sessions.touch(session, now)
        return Authentication(session, session.key)

    def logout(self, session: Session) -> bool:
        """End the session of a signed logout call (the kernel authenticated it)."""
        self.sessions.end(session.domain, session.sid, session.username)
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
