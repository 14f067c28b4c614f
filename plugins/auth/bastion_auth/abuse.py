"""Abuse bans per (domain, origin) and lock-outs per (domain, account): PROTOCOL.md section 6."""

from __future__ import annotations

import secrets
from typing import Any

from bastion_auth.sessions import account_key
from kernel.driver import StateStore, WindowEntry
from kernel.errors import (
    Abusive,
    AccountLocked,
    BastionError,
    ExpiredSession,
    Forbidden,
    InvalidCredential,
    InvalidSignature,
    ReplayedCall,
    StaleCall,
    Unauthorized,
    UnknownSession,
)

#: The weight of each refusal (PROTOCOL.md section 6); others weigh nothing.
WEIGHTS: dict[type[BastionError], int] = {
    Unauthorized: 1,
    UnknownSession: 1,
    ExpiredSession: 1,
    InvalidCredential: 1,
    AccountLocked: 1,
    StaleCall: 1,
    InvalidSignature: 3,
    ReplayedCall: 3,
    Forbidden: 3,
}


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
    """Weighs refusals in a sliding window and bans an origin once the weight reaches the maximum."""

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

    def check(self, domain: str, origin: str, now: float, until: Any = _UNREAD) -> None:
        """Raise Abusive while the origin is banned in the domain (``until``: the ban already read, if any)."""
        if not self.maximum:
            return
        if until is _UNREAD:
            until = self.state.get(domain, self.key(origin))
        if isinstance(until, (int, float)) and until > now:
            raise Abusive("too many bad requests from your address; try again later", retry_after=until - now)

    def weigh(self, domain: str, origin: str, error: BastionError, now: float) -> None:
        """Add the error's weight for the origin; ban it when the window holds the maximum."""
        weight = WEIGHTS.get(type(error), 0)
        if not weight or not self.maximum:
            return
        entries = self.state.window_add(domain, f"abuse:{origin}", secrets.token_hex(8), weight, self.window)
        if sum(e.weight for e in entries) >= self.maximum:
            until = _release_time(entries, self.maximum)
            self.state.set(domain, self.key(origin), until, max(until - now, 1))


class Accounts:
    """Counts failed logins per account and locks it for a while at the limit."""

    def __init__(self, state: StateStore, settings):
        self.state = state
        self.window = settings.account_window
        self.limit = settings.account_max_failures
        self.lock = settings.account_lock

    def check(self, domain: str, username: str, now: float) -> None:
        """Raise AccountLocked while the account is locked."""
        if not self.limit:
            return
        until = self.state.get(domain, account_key("lock", username))
        if isinstance(until, (int, float)) and until > now:
            raise AccountLocked("too many failed logins for this account; try again later", retry_after=until - now)

    def failed(self, domain: str, username: str, now: float) -> None:
        """Count a failure; at the limit, lock the account and start counting afresh."""
        if not self.limit:
            return
        key = account_key("failures", username)
        entries = self.state.window_add(domain, key, secrets.token_hex(8), 1, self.window)
        if len(entries) >= self.limit:
            self.state.set(domain, account_key("lock", username), now + self.lock, self.lock)
            self.state.delete(domain, key)

    def succeeded(self, domain: str, username: str) -> None:
        """A successful login resets the account's count."""
        if self.limit:
            self.state.delete(domain, account_key("failures", username))
