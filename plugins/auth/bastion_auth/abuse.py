"""Abuse bans per (domain, origin) and lock-outs per (domain, account): docs/protocol.md section 6."""

from __future__ import annotations

import secrets
from typing import Any

from bastion_auth.sessions import account_key
from kernel import (
    Abusive,
    AccountLocked,
    BastionError,
    ExpiredSession,
    Forbidden,
    InvalidCredential,
    InvalidSignature,
    ReplayedCall,
    StaleCall,
    StateStore,
    Unauthorized,
    UnknownSession,
    WindowEntry,
)

#: The weight of each refusal (docs/protocol.md section 6); others weigh nothing.
WEIGHTS: dict[type[BastionError], int] = {
    Unauthorized: 1,
    UnknownSession: 1,
    ExpiredSession: 1,
    InvalidCredential: 1,  # weighed by the attempt's reservation (RESERVED)
    AccountLocked: 1,  # weighed by the attempt's reservation (RESERVED)
    StaleCall: 1,
    InvalidSignature: 3,
    ReplayedCall: 3,
    Forbidden: 3,
}


#: Refusals of a login attempt, weighed by the attempt's own reservation (see :meth:`Abuse.reserve`).
RESERVED: frozenset[type[BastionError]] = frozenset({InvalidCredential, AccountLocked})

_UNREAD: Any = object()


def _release_time(entries: list[WindowEntry], maximum: int) -> float:
    """When the weight inside the window falls below ``maximum`` again, if nothing is added."""
    total = sum(e.weight for e in entries)
    for entry in entries:  # oldest expiry first
        total -= entry.weight
        if total < maximum:
            return entry.expires
    return entries[-1].expires if entries else 0.0


class Abuse:
    """Weighs refusals in a sliding window and bans an origin once the weight reaches the maximum.

    A refusal of a signed call is weighed when it happens. A login attempt
    is weighed before its password is checked: it takes a place of weight 1
    in the window (:meth:`reserve`), atomically with reading the window, so
    that however many attempts run at once, no more than ``abuse_max``
    passwords are ever checked for one origin in the window. The failure
    keeps the place (:meth:`confirm`); a success gives it back (:meth:`release`).
    """

    def __init__(self, state: StateStore, settings):
        self.state = state
        self.window = settings.abuse_window
        self.maximum = settings.abuse_max

    @property
    def enabled(self) -> bool:
        """Whether bans are on (``abuse_max`` is not 0)."""
        return bool(self.maximum)

    @staticmethod
    def key(origin: str) -> str:
        """The state key of an origin's ban."""
        return f"ban:{origin}"

    @staticmethod
    def window_key(origin: str) -> str:
        """The state key of an origin's weights."""
        return f"abuse:{origin}"

    def check(self, domain: str, origin: str, now: float, until: Any = _UNREAD) -> None:
        """Raise Abusive while the origin is banned in the domain (``until``: the ban already read, if any)."""
        if not self.maximum:
            return
        if until is _UNREAD:
            until = self.state.get(domain, self.key(origin))
        if isinstance(until, (int, float)) and until > now:
            raise Abusive("too many bad requests from your address; try again later", retry_after=until - now)

    def weigh(self, domain: str, origin: str, error: BastionError, now: float) -> float | None:
        """Add the error's weight for the origin; ban it when the window holds the maximum (return the ban's end)."""
        weight = WEIGHTS.get(type(error), 0)
        if not weight or not self.maximum or type(error) in RESERVED:
            return None
        entries = self.state.window_add(domain, self.window_key(origin), secrets.token_hex(8), weight, self.window)
        return self._ban_if_due(domain, origin, entries, now)

    def reserve(self, domain: str, origin: str, attempt: str, now: float) -> None:
        """Take a place of weight 1 for a login attempt; Abusive (and no place) if the origin is banned."""
        if not self.maximum:
            return
        entries = self.state.window_add(domain, self.window_key(origin), attempt, 1, self.window)
        others = [e for e in entries if e.member != attempt]
        if sum(e.weight for e in others) >= self.maximum:
            self.state.window_discard(domain, self.window_key(origin), attempt)
            until = _release_time(others, self.maximum)
            raise Abusive("too many bad requests from your address; try again later", retry_after=until - now)

    def confirm(self, domain: str, origin: str, attempt: str, now: float) -> float | None:
        """Keep a failed attempt's place as its weight (re-added if it went meanwhile); ban at the maximum (return
        the ban's end)."""
        if not self.maximum:
            return None
        entries = self.state.window_add(domain, self.window_key(origin), attempt, 1, self.window)
        return self._ban_if_due(domain, origin, entries, now)

    def release(self, domain: str, origin: str, attempt: str) -> None:
        """Give back the place of an attempt that succeeded (a correct login weighs nothing)."""
        if self.maximum:
            self.state.window_discard(domain, self.window_key(origin), attempt)

    def _ban_if_due(self, domain: str, origin: str, entries: list[WindowEntry], now: float) -> float | None:
        if sum(e.weight for e in entries) >= self.maximum:
            until = _release_time(entries, self.maximum)
            self.state.set(domain, self.key(origin), until, max(until - now, 1))
            return until
        return None

    def unban(self, domain: str, origin: str) -> bool:
        """End an origin's ban and forget its weights (``bastion unban``); return whether it was banned or weighed."""
        banned = self.state.delete(domain, self.key(origin))
        weighed = self.state.delete(domain, self.window_key(origin))
        return banned or weighed

    def banned_until(self, domain: str, origin: str, now: float) -> float | None:
        """When the origin's ban ends, or None when it is not banned."""
        until = self.state.get(domain, self.key(origin))
        return until if isinstance(until, (int, float)) and until > now else None


#: The member of an account's window that stands for its lock.
LOCK = "lock"


class Accounts:
    """Counts failed logins per account and locks it for a while at the limit.

    One window per account holds a member per attempt in flight (weight 0)
    or failed (weight 1), and, while the account is locked, the member
    :data:`LOCK` expiring with the lock. An attempt takes its place before
    its password is checked, atomically with reading the window: it is
    refused (AccountLocked, nothing checked) when the account is locked or
    when the attempts already in the window reach the limit. So no more than
    ``account_max_failures`` passwords are ever checked per lock period,
    whatever the concurrency.
    """

    def __init__(self, state: StateStore, settings):
        self.state = state
        self.window = settings.account_window
        self.limit = settings.account_max_failures
        self.lock = settings.account_lock

    def reserve(self, domain: str, username: str, attempt: str, now: float) -> None:
        """Take a place for a login attempt; AccountLocked (and no place) if the account is locked or full."""
        if not self.limit:
            return
        key = account_key("failures", username)
        entries = self.state.window_add(domain, key, attempt, 0, self.window)
        lock = [e for e in entries if e.member == LOCK]
        others = [e for e in entries if e.member not in (attempt, LOCK)]
        if lock or len(others) >= self.limit:
            self.state.window_discard(domain, key, attempt)
            retry_after = lock[0].expires - now if lock else 1
            raise AccountLocked("too many failed logins for this account; try again later", retry_after=retry_after)

    def failed(self, domain: str, username: str, attempt: str, now: float) -> float | None:
        """Count a failure; at the limit, lock the account, and its count starts afresh (return the lock's end)."""
        if not self.limit:
            return None
        key = account_key("failures", username)
        entries = self.state.window_add(domain, key, attempt, 1, self.window)
        failures = [e for e in entries if e.member != LOCK and e.weight]
        if len(failures) >= self.limit and not any(e.member == LOCK for e in entries):
            # The lock first: from this moment every new attempt is refused; then the count restarts.
            self.state.window_add(domain, key, LOCK, 0, self.lock)
            for entry in failures:
                self.state.window_discard(domain, key, entry.member)
            return now + self.lock
        return None

    def locked_until(self, domain: str, username: str) -> float | None:
        """When the account's lock ends, or None when it is not locked."""
        entries = self.state.window_entries(domain, account_key("failures", username))
        return next((e.expires for e in entries if e.member == LOCK), None)

    def unlock(self, domain: str, username: str) -> bool:
        """End the account's lock and forget its failures (``bastion unlock``); return whether it was locked."""
        locked = self.locked_until(domain, username) is not None
        self.state.delete(domain, account_key("failures", username))
        return locked

    def succeeded(self, domain: str, username: str) -> None:
        """A successful login resets the account's count."""
        if self.limit:
            self.state.delete(domain, account_key("failures", username))
