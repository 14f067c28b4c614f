"""Sessions in the driver's short-lived state: shared by every worker and node."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel import (
    ExpiredSession,
    KeyPair,
    MaxActiveSessions,
    Sealing,
    Settings,
    StateStore,
    UnknownSession,
    b64url,
    b64url_decode,
    derive_keys,
)

#: How many characters of a sid ``sessions()`` shows: enough to tell a user's sessions apart, never a whole sid.
SHOWN_SID = 8


def sid_prefix(sid: str) -> str:
    """What logs and ``bastion sessions`` show of a session id: its first 8 characters, never the whole sid."""
    return sid[:SHOWN_SID]


@dataclass
class Session:
    """A live session: who, its key, when it ends, and where and when it was last used.

    ``origin`` is the address of its latest call (its login's until then),
    ``last_seen`` the time of that call. ``roles`` are the user's roles as a
    call last read them from the user's record, and ``roles_epoch`` the
    domain's roles epoch read before that (:mod:`bastion_auth.roles`): a call
    uses them only while the epoch is still that one; None until a call
    reads them.

    ``key`` is the key calls are signed with: the login's ``key`` (version 1), or the ``call-mac`` key the login
    agreed (version 2, docs/protocol.md section 16), which also has ``answer_key`` (answers are signed with it),
    the two encryption keys, and, until the login answers, the server's ``public`` key of the agreement.

    ``passkey``: the id of the passkey whose login opened it (None for any other login): removing that passkey
    ends it (:meth:`Sessions.end_opened_with`).
    """

    sid: str
    username: str
    domain: str
    key: bytes
    created: float
    idle_expires: float
    absolute_expires: float
    origin: str = ""
    last_seen: float = 0.0
    roles: tuple[str, ...] | None = None
    roles_epoch: str | None = None
    answer_key: bytes | None = None
    call_enc: bytes | None = None
    answer_enc: bytes | None = None
    public: str | None = None
    passkey: str | None = None

    def __repr__(self) -> str:
        # Never the key nor the whole sid: reprs end up in logs (BASTION_TRACE_PLUGINS).
        return f"Session({self.username}@{self.domain}, sid {self.sid[:SHOWN_SID]}...)"

    @property
    def version(self) -> int:
        """The protocol version of the login that opened it: 2 when it agreed on keys."""
        return 1 if self.answer_key is None else 2

    @property
    def signing_key(self) -> bytes:
        """The key answers are signed with: the session's one key (version 1), else its ``answer-mac`` key."""
        return self.key if self.answer_key is None else self.answer_key

    def sealing(self, required: bool) -> Sealing | None:
        """The session's encryption keys for the pipeline (None for a version-1 session)."""
        if self.call_enc is None or self.answer_enc is None:
            return None
        return Sealing(self.call_enc, self.answer_enc, required)

    @property
    def expires(self) -> float:
        """When the session ends if left idle."""
        return min(self.idle_expires, self.absolute_expires)

    def to_state(self) -> dict:
        """The JSON value kept in the state store."""
        value = {"u": self.username, "k": b64url(self.key), "c": self.created,
                 "i": self.idle_expires, "a": self.absolute_expires, "o": self.origin, "s": self.last_seen}
        if self.roles is not None:
            value["r"], value["e"] = list(self.roles), self.roles_epoch
        if self.passkey is not None:
            value["p"] = self.passkey
        if self.answer_key is not None and self.call_enc is not None and self.answer_enc is not None:
            value["v"] = 2
            value["ka"], value["ce"], value["ae"] = b64url(self.answer_key), b64url(self.call_enc), b64url(self.answer_enc)
        return value

    def describe(self, current_sid: str | None = None) -> dict[str, Any]:
        """What ``sessions()`` shows of a session: never its key, never its whole sid."""
        return {"id": self.sid[:SHOWN_SID], "created": int(self.created), "last_seen": int(self.last_seen),
                "origin": self.origin, "current": self.sid == current_sid}


#: Seconds an idle expiry must move before the slide is written.
SLIDE_STEP = 1.0

#: What a caller passes for a stored value it did not read (the session is then read).
UNREAD: Any = object()


def account_key(prefix: str, username: str) -> str:
    """A state key for a username, fixed in length whatever the username."""
    return f"{prefix}:{hashlib.sha256(username.encode('utf-8')).hexdigest()[:32]}"


class Sessions:
    """Creates, loads, slides and ends sessions.

    A session is kept ``idle_timeout`` seconds past its end, so that a late
    call learns ExpiredSession rather than UnknownSession; after that the
    server forgets it. A session ended before its time (a logout, "sign out
    everywhere else", a password change, a forced login, the user's removal)
    leaves a mark, ``ended:<sid>``, for as long as it could have lived and
    been remembered (:meth:`was_ended`): the UnknownSession of a tab that
    still holds it is then a late client, not a guessed sid, and weighs
    nothing against its origin. Sliding the idle expiry is an atomic replace of a live
    key, so a call that loaded the session just before a concurrent logout
    cannot bring it back. The slide is written only when it moves the expiry
    by at least :data:`SLIDE_STEP` seconds, which spares a write per call to
    a busy client and ends an idle session at most that much early.

    Its limits (``idle_timeout``, ``absolute_timeout``,
    ``max_active_sessions``) are those of the session's domain:
    ``settings_of(domain)`` gives them (its tenant's, built at start-up).
    """

    def __init__(self, state: StateStore, settings_of: Callable[[str], Settings]):
        self.state = state
        self.settings_of = settings_of

    def create(self, domain: str, username: str, now: float, force: bool = False, origin: str = "",
               client_public: str | None = None, passkey: str | None = None) -> Session:
        """Open a session; MaxActiveSessions when the user is at the maximum and ``force`` is false.

        ``client_public``: the client's public key of a version-2 login (checked by the caller); the session's
        keys are then agreed with a new key pair of the server's (its public key is the session's ``public``),
        and no key is made up to be sent. ``passkey``: the id of the passkey whose login opens it.

        Reserve, then check: the new session is stored and listed first, then
        the user's live sessions are counted, so that of two logins racing for
        the last place at most one keeps its session (both may lose: that is
        the safe side). ``force`` ends every other session of the user.
        """
        limits = self.settings_of(domain)
        index = account_key("user-sessions", username)
        sid = b64url(secrets.token_bytes(24))
        session = Session(sid=sid, username=username, domain=domain, key=b"", created=now,
                          idle_expires=now + limits.idle_timeout, absolute_expires=now + limits.absolute_timeout,
                          origin=origin, last_seen=now, passkey=passkey)
        if client_public is None:
            session.key = secrets.token_bytes(32)  # sent in the login's answer
        else:  # agreed: no key is made up, none is sent
            pair = KeyPair()
            keys = derive_keys(pair.agree(client_public), sid, domain, client_public, pair.public)
            session.key, session.answer_key = keys.call_mac, keys.answer_mac
            session.call_enc, session.answer_enc, session.public = keys.call_enc, keys.answer_enc, pair.public
        self.save(session, now)
        entries = self.state.window_add(domain, index, session.sid, 0, self.remembered(domain))
        max_active = limits.max_active_sessions
        if max_active or force:
            sids = [e.member for e in entries if e.member != session.sid]
            values = self.state.get_many(domain, [self.key(sid) for sid in sids])  # one round trip for all
            live = [sid for sid, value in zip(sids, values, strict=True) if _is_live(value, now)]
            if force:
                for sid in live:
                    self.end(domain, sid, username)
            elif len(live) >= max_active:
                self.end(domain, session.sid, username, mark=False)
                raise MaxActiveSessions(f"already {len(live)} active sessions; log in with force to end them")
        return session

    def remembered(self, domain: str) -> int:
        """Seconds a session of ``domain`` can live and be remembered: ``absolute_timeout + idle_timeout``."""
        limits = self.settings_of(domain)
        return limits.absolute_timeout + limits.idle_timeout

    def save(self, session: Session, now: float) -> None:
        """Store a session until ``idle_timeout`` seconds past its end."""
        ttl = max(session.expires + self.settings_of(session.domain).idle_timeout - now, 1)
        self.state.set(session.domain, self.key(session.sid), session.to_state(), ttl)

    def load(self, domain: str, sid: str, now: float, value: Any = UNREAD) -> Session:
        """Return the session; UnknownSession or ExpiredSession otherwise.

        ``value`` is the stored value when the caller already read it (see
        :meth:`key`); otherwise it is read here.
        """
        if value is UNREAD:
            value = self.state.get(domain, self.key(sid))
        if not isinstance(value, dict):
            raise UnknownSession("unknown session; log in again")
        session = _from_state(domain, sid, value)
        if now >= session.expires:
            expired = ExpiredSession("session expired; log in again")
            expired.username = session.username  # type: ignore[attr-defined]  # for the security log
            raise expired
        return session

    @staticmethod
    def key(sid: str) -> str:
        """The state key of a session."""
        return f"session:{sid}"

    @staticmethod
    def ended_key(sid: str) -> str:
        """The state key of the mark an ended session leaves."""
        return f"ended:{sid}"

    def was_ended(self, domain: str, sid: str) -> bool:
        """Whether ``sid`` names a session of this domain that was ended (and could still be alive otherwise)."""
        return self.state.get(domain, self.ended_key(sid)) is not None

    def touch(self, session: Session, now: float, origin: str | None = None, changed: bool = False) -> None:
        """Slide the idle expiry forward (never past the absolute lifetime) and note when and from where the
        session was used, never reviving an ended session.

        Written only when the time of last use moves by :data:`SLIDE_STEP`,
        the call comes from another address, or ``changed`` (the call read
        the session's roles again): at most one write a second for a busy
        client, as before ``last_seen`` was kept.
        """
        moved = origin is not None and origin != session.origin
        if now - session.last_seen < SLIDE_STEP and not moved and not changed:
            return
        idle = self.settings_of(session.domain).idle_timeout
        session.idle_expires = max(session.idle_expires, min(now + idle, session.absolute_expires))
        session.last_seen = now
        if origin is not None:
            session.origin = origin
        ttl = max(session.expires + idle - now, 1)
        self.state.replace(session.domain, self.key(session.sid), session.to_state(), ttl)

    def _listed(self, domain: str, username: str, keep_sid: str | None = None) -> list[tuple[str, Any]]:
        """The sessions listed for the user (but ``keep_sid``), each with its stored value (None once gone): one
        window read and one ``get_many``."""
        index = account_key("user-sessions", username)
        sids = [entry.member for entry in self.state.window_entries(domain, index) if entry.member != keep_sid]
        values = self.state.get_many(domain, [self.key(sid) for sid in sids]) if sids else []
        return list(zip(sids, values, strict=True))

    def live(self, domain: str, username: str, now: float) -> list[Session]:
        """The user's live sessions in the domain, oldest first."""
        found = [_from_state(domain, sid, value) for sid, value in self._listed(domain, username)
                 if _is_live(value, now) and value.get("u") == username]
        return sorted(found, key=lambda session: (session.created, session.sid))

    def at_limit(self, domain: str, username: str, now: float) -> int | None:
        """How many live sessions the user has, when that is ``max_active_sessions`` or more; None below it or
        without a limit. A read, not the reservation :meth:`create` makes: for a login that must not use up a
        one-time code on a session it will not get (see ``Login.check_password``)."""
        max_active = self.settings_of(domain).max_active_sessions
        if not max_active:
            return None
        live = len(self.live(domain, username, now))
        return live if live >= max_active else None

    def end_others(self, domain: str, username: str, keep_sid: str, now: float) -> int:
        """End every session of the user but ``keep_sid``; return how many of them were live.

        Sessions that expired but are still remembered go too (their sids
        then answer UnknownSession rather than ExpiredSession: log in again
        either way). A login that lists its session while this runs may lose
        it as well: the safe side.
        """
        listed = self._listed(domain, username, keep_sid)
        for sid, _ in listed:
            self.end(domain, sid, username)
        return sum(_is_live(value, now) for _, value in listed)

    def end_opened_with(self, domain: str, username: str, passkey: str, now: float, keep_sid: str | None = None) -> int:
        """End every session of the user that the passkey ``passkey`` opened, but ``keep_sid``; return how many of
        them were live.

        Called once the passkey is removed: a passkey login that verified it
        meanwhile stores its session first and looks for the passkey after
        (its ``still_valid``), so either it finds the passkey gone and ends
        its session itself, or this read lists that session.
        """
        opened = [(sid, value) for sid, value in self._listed(domain, username, keep_sid)
                  if isinstance(value, dict) and value.get("p") == passkey and value.get("u") == username]
        for sid, _ in opened:
            self.end(domain, sid, username)
        return sum(_is_live(value, now) for _, value in opened)

    def end(self, domain: str, sid: str, username: str, mark: bool = True) -> None:
        """Forget one session: every later use of its sid is UnknownSession.

        ``mark``: leave the ``ended:`` mark (see the class); not for a session
        its own login ends before answering, which no client ever held.
        """
        self._forget(domain, sid, mark)
        self.state.window_discard(domain, account_key("user-sessions", username), sid)

    def end_all(self, domain: str, username: str) -> int:
        """Forget every session of a user; return how many there were."""
        index = account_key("user-sessions", username)
        entries = self.state.window_entries(domain, index)
        for entry in entries:
            self._forget(domain, entry.member)
        self.state.delete(domain, index)
        return len(entries)

    def _forget(self, domain: str, sid: str, mark: bool = True) -> None:
        if mark:
            # First the mark, then the session: a call refused in between is told UnknownSession with the mark.
            self.state.set(domain, self.ended_key(sid), 1, self.remembered(domain))
        self.state.delete(domain, self.key(sid))


def _from_state(domain: str, sid: str, value: dict) -> Session:
    """A session from its stored value (one stored before origin and last use were kept reads as its login)."""
    roles = value.get("r")
    session = Session(sid=sid, username=value["u"], domain=domain, key=b64url_decode(value["k"]), created=value["c"],
                      idle_expires=value["i"], absolute_expires=value["a"], origin=value.get("o", ""),
                      last_seen=value.get("s", value["c"]), roles=tuple(roles) if isinstance(roles, list) else None,
                      roles_epoch=value.get("e"), passkey=value.get("p"))
    if value.get("v") == 2:
        session.answer_key = b64url_decode(value["ka"])
        session.call_enc, session.answer_enc = b64url_decode(value["ce"]), b64url_decode(value["ae"])
    return session


def _is_live(value: Any, now: float) -> bool:
    """Whether a stored session value has not yet expired."""
    return isinstance(value, dict) and now < min(value["i"], value["a"])
