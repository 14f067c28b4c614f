"""The auth service of one runtime: login, signed-call verification, logout."""

from __future__ import annotations

import time
from typing import Any

from bastion_auth import users
from bastion_auth.abuse import Abuse, Accounts
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import Session, Sessions
from kernel.context import Request
from kernel.errors import InvalidCall, InvalidCredential, InvalidSignature, ReplayedCall, StaleCall, Unauthorized
from kernel.jsonio import loads
from kernel.signing import (
    b64url,
    macs_equal,
    parse_authorization,
    request_mac,
    response_mac,
    server_authorization,
)

#: Where ``admit`` leaves the session it read for ``authenticate`` (in ``request.notes``).
_PREFETCHED = "bastion_auth.session"


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
        """Check a login body and credentials; open a session and return the PROTOCOL.md answer."""
        username, password, force = parse_login(request.body)
        domain = request.domain
        self.accounts.check(domain, username, self.clock())
        record = users.find(username)
        valid, outdated = self.passwords.verify(password, record.password if record is not None else None)
        now = self.clock()
        if not valid:
            self.accounts.failed(domain, username, now)
            if self.settings.dummy_delay:
                time.sleep(self.settings.dummy_delay)
            raise InvalidCredential("invalid username or password")
        self.accounts.succeeded(domain, username)
        if outdated:
            users.set_password(username, self.passwords.context.hash(password), expected_hash=record.password)
        session = self.sessions.create(domain, username, now, force=force)
        return {
            "sid": session.sid,
            "key": b64url(session.key),
            "expires": int(session.expires),
            "server_time": now,
            "user": {"username": username, "domain": domain},
        }

    # -- signed calls -----------------------------------------------------

    def admit(self, request: Request) -> None:
        """Step 3: refuse a banned origin.

        The same round trip also reads the session a well-formed Authorization
        header names, for step 7 to use: each signed call then costs two
        round trips to the state store (this one and the nonce), plus a third
        when the idle expiry slides.
        """
        keys = [self.abuse.key(request.origin)] if self.abuse.enabled else []
        params = parse_authorization(request.header("Authorization"))
        if params is not None:
            keys.append(self.sessions.key(params["sid"]))
        if not keys:
            return
        values = self.state.get_many(request.domain, keys)
        if params is not None:
            request.notes[_PREFETCHED] = (params, values[-1])
        if self.abuse.enabled:
            self.abuse.check(request.domain, request.origin, self.clock(), until=values[0])

    def authenticate(self, request: Request) -> Session:
        """Steps 6 to 10 of PROTOCOL.md section 4; sign every answer once the MAC verified."""
        prefetched = request.notes.pop(_PREFETCHED, None)
        if prefetched is not None:  # admission parsed this very header and read its session
            params, stored = prefetched
        else:
            params = parse_authorization(request.header("Authorization"))
            if params is None:
                raise Unauthorized("a signed Authorization header is required")
        sid, ts, nonce = params["sid"], params["ts"], params["nonce"]
        if prefetched is not None:
            session = self.sessions.load(request.domain, sid, self.clock(), stored)
        else:
            session = self.sessions.load(request.domain, sid, self.clock())
        expected = request_mac(session.key, ts, nonce, request.path, request.domain, request.body)
        if not macs_equal(params["mac"], expected):
            raise InvalidSignature("the call's signature does not verify")
        key = session.key
        request.signer = lambda status, body: {
            "Server-Authorization": server_authorization(response_mac(key, nonce, status, body))}
        now = self.clock()
        if abs(now - int(ts)) > self.skew:
            raise StaleCall("the call's timestamp is outside the allowed skew", server_time=now)
        if not self.state.add(request.domain, f"nonce:{sid}:{nonce}", 1, self.nonce_ttl):
            raise ReplayedCall("this call was already made")
        self.sessions.touch(session, now)
        request.session = session
        return session

    def logout(self, request: Request) -> bool:
        """End the session of a signed logout call."""
        session = self.authenticate(request)
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
