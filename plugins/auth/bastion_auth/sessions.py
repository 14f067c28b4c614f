"""Sessions in the driver's short-lived state: shared by every worker and node."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from kernel.driver import StateStore
from kernel.errors import ExpiredSession, MaxActiveSessions, UnknownSession
from kernel.signing import b64url, b64url_decode


@dataclass
class Session:
    """A live session: who, its key, and when it ends."""

    sid: str
    username: str
    domain: str
    key: bytes
    created: float
    idle_expires: float
    absolute_expires: float

    @property
    def expires(self) -> float:
        """When the session ends if left idle."""
        return min(self.idle_expires, self.absolute_expires)

    def to_state(self) -> dict:
        """The JSON value kept in the state store."""
        return {"u": self.username, "k": b64url(self.key), "c": self.created,
                "i": self.idle_expires, "a": self.absolute_expires}


def account_key(prefix: str, username: str) -> str:
    """A state key for a username, fixed in length whatever the username."""
    return f"{prefix}:{hashlib.sha256(username.encode('utf-8')).hexdigest()[:32]}"


class Sessions:
    """Creates, loads, slides and ends sessions.

    A session is kept ``idle_timeout`` seconds past its end, so that a late
    call learns ExpiredSession rather than UnknownSession; after that the
    server forgets it. Ending a session leaves a marker (``ended:<sid>``) for
    as long as the session could have lived, so that a call which loaded the
    session just before a concurrent logout cannot bring it back when it
    slides the idle expiry.
    """

    def __init__(self, state: StateStore, settings):
        self.state = state
        self.idle = settings.idle_timeout
        self.absolute = settings.absolute_timeout
        self.max_active = settings.max_active_sessions
        self.grace = settings.idle_timeout

    def create(self, domain: str, username: str, now: float, force: bool = False) -> Session:
        """Open a session; MaxActiveSessions when the user is at the maximum and ``force`` is false."""
        index = account_key("user-sessions", username)
        if self.max_active or force:
            live = [e.member for e in self.state.window_entries(domain, index)
                    if self._is_live(domain, e.member, now)]
            if force:
                for sid in live:
                    self.end(domain, sid, username)
            elif len(live) >= self.max_active:
                raise MaxActiveSessions(f"already {len(live)} active sessions; log in with force to end them")
        session = Session(sid=b64url(secrets.token_bytes(24)), username=username, domain=domain,
                          key=secrets.token_bytes(32), created=now, idle_expires=now + self.idle,
                          absolute_expires=now + self.absolute)
        self.save(session, now)
        self.state.window_add(domain, index, session.sid, 0, self.absolute + self.grace)
        return session

    def save(self, session: Session, now: float) -> None:
        """Store a session until ``idle_timeout`` seconds past its end."""
        ttl = max(session.expires + self.grace - now, 1)
        self.state.set(session.domain, f"session:{session.sid}", session.to_state(), ttl)

    def load(self, domain: str, sid: str, now: float) -> Session:
        """Return the session; UnknownSession or ExpiredSession otherwise."""
        value = self.state.get(domain, f"session:{sid}")
        if not isinstance(value, dict):
            raise UnknownSession("unknown session; log in again")
        session = Session(sid=sid, username=value["u"], domain=domain, key=b64url_decode(value["k"]),
                          created=value["c"], idle_expires=value["i"], absolute_expires=value["a"])
        if now >= session.expires:
            raise ExpiredSession("session expired; log in again")
        return session

    def touch(self, session: Session, now: float) -> None:
        """Slide the idle expiry forward, never past the absolute lifetime."""
        session.idle_expires = min(now + self.idle, session.absolute_expires)
        self.save(session, now)
        # A logout (or deluser, or a forced login) may have ended the session
        # since load(): the state store has no compare-and-set, so the ending
        # leaves a marker first and the slide undoes itself when it finds one.
        if self.state.get(session.domain, f"ended:{session.sid}") is not None:
            self.state.delete(session.domain, f"session:{session.sid}")

    def end(self, domain: str, sid: str, username: str) -> None:
        """Forget one session: every later use of its sid is UnknownSession."""
        self._forget(domain, sid)
        self.state.window_discard(domain, account_key("user-sessions", username), sid)

    def end_all(self, domain: str, username: str) -> int:
        """Forget every session of a user; return how many there were."""
        index = account_key("user-sessions", username)
        entries = self.state.window_entries(domain, index)
        for entry in entries:
            self._forget(domain, entry.member)
        self.state.delete(domain, index)
        return len(entries)

    def _forget(self, domain: str, sid: str) -> None:
        # The marker outlives any session that could still be slid (absolute
        # lifetime): past it, a late slide could only store an expired session.
        self.state.set(domain, f"ended:{sid}", 1, self.absolute + self.grace)
        self.state.delete(domain, f"session:{sid}")

    def _is_live(self, domain: str, sid: str, now: float) -> bool:
        value = self.state.get(domain, f"session:{sid}")
        return isinstance(value, dict) and now < min(value["i"], value["a"])
