"""Signed calls: the origin's ban with the session (step 3), then the session, MAC, skew and nonce (steps 7 to
10 of docs/protocol.md section 4), and the caller's roles, once the call is proven.

What a call costs: two round trips to the state store (the ban, the session and the domain's roles epoch in one
read at step 3, the nonce at step 10; a third when the idle expiry slides or the session's roles are stored
again). The roles come with the session while the domain's roles epoch is the one they were read under
(:mod:`bastion_auth.roles`); otherwise, at a session's first call and after a change of roles, one read of the
user's record in the records store, after the nonce, so that no refused call reads it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion_auth import users
from bastion_auth.login import LOGOUT_PATH
from bastion_auth.roles import EPOCH_KEY
from bastion_auth.sessions import UNREAD, Session, sid_prefix
from kernel import (
    Authentication,
    BastionError,
    Credentials,
    EncryptionRequired,
    ExpiredSession,
    InvalidSignature,
    ReplayedCall,
    Request,
    ServiceUnavailable,
    StaleCall,
    Unauthorized,
    UnknownSession,
)

if TYPE_CHECKING:
    from bastion_auth.core import Auth

#: The security event of a refused signed call, and its level.
CALL_EVENTS: dict[type[BastionError], tuple[str, int]] = {
    InvalidSignature: ("bad_signature", logging.WARNING),
    ReplayedCall: ("replayed_call", logging.WARNING),
    StaleCall: ("stale_call", logging.INFO),
    ExpiredSession: ("session_expired", logging.INFO),
}

#: What the authentication of a call that asks for no roles carries: the logout's (its handler ends the session
#: and reads nothing else, so it needs nothing of the records store).
NO_ROLES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SessionRead:
    """What step 3 read of a signed call's session and its domain's roles epoch, with the origin's ban: step 7
    uses them instead of reading again."""

    sid: str
    stored: Any
    epoch: Any = UNREAD

    def __repr__(self) -> str:  # reprs end up in logs (BASTION_TRACE_PLUGINS): never the key or the whole sid
        return f"SessionRead({self.sid[:8]}…)"


class SignedCalls:
    """The verification of signed calls for one runtime's auth plugin (the :class:`Auth`'s stores and events)."""

    def __init__(self, auth: Auth):
        self.auth = auth

    def admit(self, request: Request, credentials: Credentials | None) -> SessionRead | None:
        """Step 3: the origin's ban, in one read with the session of a signed call, which step 7 then uses."""
        auth = self.auth
        bans = auth.abuse.enabled(request.domain)
        keys = [auth.abuse.key(request.origin)] if bans else []
        if credentials is not None:
            keys += [auth.sessions.key(credentials.sid), EPOCH_KEY]
        if not keys:
            return None
        values = auth.state.get_many(request.domain, keys)
        if bans:
            auth.abuse.check(request.domain, request.origin, auth.clock(), until=values[0])
        return SessionRead(credentials.sid, values[-2], values[-1]) if credentials is not None else None

    def authenticate(self, request: Request, credentials: Credentials | None,
                     admissions: Sequence[Any] = ()) -> Authentication:
        """Steps 7 to 10 of docs/protocol.md section 4, once the body has arrived, and the caller's roles.

        Two round trips to the state store for a call: the origin's ban and the
        session in one read (step 3, :meth:`admit`, handed here in
        ``admissions``), then the nonce, recorded only while the session is
        still live, so that a call can never pass after a concurrent logout,
        however late its body arrived (plus a third when the idle expiry
        slides). Then the roles (:meth:`roles`).
        """
        auth = self.auth
        if credentials is None:
            raise Unauthorized("a signed Authorization header is required")
        sid = credentials.sid
        read = next((a for a in admissions if isinstance(a, SessionRead) and a.sid == sid), None)
        stored, epoch = (read.stored, read.epoch) if read is not None else (UNREAD, UNREAD)
        try:
            session = auth.sessions.load(request.domain, sid, auth.clock(), stored)
        except ExpiredSession as expired:
            self._call_event(expired, getattr(expired, "username", None), sid)
            raise
        except UnknownSession as unknown:
            # A read on the refusal's path only: a session this server ended is a late client (weight 0).
            try:
                unknown.ended = auth.sessions.was_ended(request.domain, sid)  # type: ignore[attr-defined]
            except ServiceUnavailable:
                pass  # the refusal stands; unread, it weighs as the table says
            raise
        if not credentials.verify(session.key, request):
            error = InvalidSignature("the call's signature does not verify")
            self._call_event(error, session.username, sid)
            raise error
        now = auth.clock()
        tenant = auth.tenant(request.domain)
        required = tenant.settings.encryption == "required"
        # Whole seconds against whole seconds: a client's ts is its clock rounded down, so the server's is too,
        # and the window is symmetric, floor(now) - skew to floor(now) + skew, both ends included.
        offset = math.floor(now) - int(credentials.ts)
        if abs(offset) > tenant.settings.skew:
            return self._refusal(session, StaleCall("the call's timestamp is outside the allowed skew", server_time=now),
                                 skew=offset)
        if required and session.version == 1 and request.path != LOGOUT_PATH:
            # A session opened before the tenant required encryption has no keys to seal with: it must log in again.
            return self._refusal(session, EncryptionRequired("this tenant requires encrypted calls: log in again "
                                                             "with a version-2 login"))
        nonce_key = f"nonce:{sid}:{credentials.nonce}"
        if not auth.state.add(request.domain, nonce_key, 1, tenant.nonce_ttl, if_live=auth.sessions.key(sid)):
            # Either the nonce was used, or the session ended since it was read: say which.
            try:
                auth.sessions.load(request.domain, sid, auth.clock())
            except BastionError as ended:
                ended.ended = True  # type: ignore[attr-defined]  # the session was live at step 7: no guess
                return self._refusal(session, ended)
            return self._refusal(session, ReplayedCall("this call was already made"))
        try:
            roles, reread = self.roles(request, session, epoch)
        except ServiceUnavailable as unavailable:
            return self._refusal(session, unavailable)  # signed, as a 503 of a later step is; nothing slides
        auth.sessions.touch(session, now, request.origin, changed=reread)
        # The answer says when the session now ends (Session-Expires), except a logout's: it ends it.
        expires = None if request.path == LOGOUT_PATH else session.expires
        return Authentication(session, session.signing_key, roles=roles, expires=expires,
                              sealing=session.sealing(required))

    def roles(self, request: Request, session: Session, epoch: Any = UNREAD) -> tuple[frozenset[str], bool]:
        """The caller's roles as stored with the user now, and whether they were read from the record.

        A change of roles counts from the user's next call (docs/protocol.md
        section 4, "Permissions"). The session carries the roles a call last
        read, with the domain's roles epoch read before them: while ``epoch``
        (read at step 3 with the session) is still that one, they are the
        user's roles now and nothing else is read (:mod:`bastion_auth.roles`
        says why). Otherwise one read of the user's record by its id gives
        them, and the session keeps them with ``epoch`` (the caller writes the
        session). An epoch this call did not read (``UNREAD``) always reads
        the record. A logout reads none: nothing asks.
        """
        if request.path == LOGOUT_PATH:
            return NO_ROLES, False
        if epoch is not UNREAD and session.roles is not None and session.roles_epoch == epoch:
            return frozenset(session.roles), False
        roles = users.roles_of(session.username)
        if epoch is UNREAD:
            return frozenset(roles), False
        session.roles, session.roles_epoch = roles, epoch
        return frozenset(roles), True

    def _refusal(self, session: Session, error: BastionError, **fields: Any) -> Authentication:
        """A signed refusal, and its security event."""
        self._call_event(error, session.username, session.sid, **fields)
        return Authentication(session, session.signing_key, error,
                              sealing=session.sealing(self.auth.tenant(session.domain).settings.encryption == "required"))

    def _call_event(self, error: BastionError, username: str | None, sid: str, **fields: Any) -> None:
        event = CALL_EVENTS.get(type(error))
        if event is not None:
            self.auth.event(event[0], username, event[1], session=sid_prefix(sid), **fields)
