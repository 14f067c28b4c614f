"""The auth service of one runtime: login, signed-call verification, logout."""

from __future__ import annotations

import secrets
import time
from typing import Any

from bastion_auth import users
from bastion_auth.abuse import Abuse, Accounts
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import Session, Sessions
from kernel.context import Request
from kernel.errors import AccountLocked, InvalidCall, InvalidCredential, InvalidSignature, ReplayedCall, StaleCall, Unauthorized
from kernel.jsonio import loads
from kernel.signing import (
    b64url,
    macs_equal,
    parse_authorization,
    request_mac,
    response_mac,
    server_authorization,
)


class Auth:
    """Everything the plugin keeps for one runtime."""

    def __init__(self, runtime, settings):
        self.runtime = runtime
        self.settings = settings
        self.clock = runtime.clock
        state = runtime.state
        self.state = state
        self.passwords = Passwords(settings)
        self.sessions = Sessions(state, settings)
        self.abuse = Abuse(state, settings)
        self.accounts = Accounts(state, settings)
        self.skew = settings.skew
        # a nonce can pass while |now - ts| <= skew, and ts may lie up to skew ahead of now
        self.nonce_ttl = 2 * settings.skew + 1

    # -- login ------------------------------------------------------------

    def login(self, request: Request) -> dict[str, Any]:
        """Check a login body and credentials; open a session and return the PROTOCOL.md answer.

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

    def admit(self, request: Request) -> None:
        """Step 3 for a request that is not a signed call (or a call refused at step 4 or 5): one read."""
        if self.abuse.enabled:
            self.abuse.check(request.domain, request.origin, self.clock())

    def authenticate(self, request: Request) -> Session:
        """Steps 3 and 6 to 10 of PROTOCOL.md section 4, once the body has arrived.

        Two round trips to the state store: the origin's ban and the session
        in one read, then the nonce, recorded only while the session is still
        live, so that a call can never pass after a concurrent logout, however
        late its body arrived (plus a third when the idle expiry slides).
        """
        params = parse_authorization(request.header("Authorization"))
        keys = [self.abuse.key(request.origin)] if self.abuse.enabled else []
        if params is not None:
            keys.append(self.sessions.key(params["sid"]))
        values = self.state.get_many(request.domain, keys) if keys else []
        if self.abuse.enabled:
            self.abuse.check(request.domain, request.origin, self.clock(), until=values[0])
        if params is None:
            raise Unauthorized("a signed Authorization header is required")
        sid, ts, nonce = params["sid"], params["ts"], params["nonce"]
        session = self.sessions.load(request.domain, sid, self.clock(), values[-1])
        expected = request_mac(session.key, ts, nonce, request.path, request.domain, request.body)
        if not macs_equal(params["mac"], expected):
            raise InvalidSignature("the call's signature does not verify")
        key = session.key
        request.signer = lambda status, body: {
            "Server-Authorization": server_authorization(response_mac(key, nonce, status, body))}
        now = self.clock()
        if abs(now - int(ts)) > self.skew:
            raise StaleCall("the call's timestamp is outside the allowed skew", server_time=now)
        session_key = self.sessions.key(sid)
        if not self.state.add(request.domain, f"nonce:{sid}:{nonce}", 1, self.nonce_ttl, if_live=session_key):
            # Either the nonce was used, or the session ended since it was read: say which.
            self.sessions.load(request.domain, sid, self.clock())
            raise ReplayedCall("this call was already made")
        self.sessions.touch(session, now)
        return session

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
