"""Abuse bans per (domain, origin) and lock-outs per (domain, account): docs/protocol.md section 6."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from bastion_auth.sessions import account_key
from kernel import (
    PROBE_DOMAIN,
    Abusive,
    AccountLocked,
    BastionError,
    InvalidCredential,
    InvalidSignature,
    ReplayedCall,
    Settings,
    StaleCall,
    StateStore,
    Unauthorized,
    UnknownSession,
    WindowEntry,
)

#: The weight of each refusal (docs/protocol.md section 6); others weigh nothing. A weight is evidence that
#: someone is guessing a secret (a password, a session's key) or replaying what they captured, never a mistake
#: of a client that holds its session: a call that passed step 10 proved its key, so what it is refused after
#: (Forbidden, NotFound, ...) weighs nothing, and neither does a refusal naming a session this server made and
#: ended or let expire (see :func:`weight_of`).
WEIGHTS: dict[type[BastionError], int] = {
    Unauthorized: 1,
    UnknownSession: 1,  # 0 for a session the server ended (see weight_of)
    InvalidCredential: 1,  # weighed by the attempt's reservation (RESERVED)
    AccountLocked: 1,  # weighed by the attempt's reservation (RESERVED)
    StaleCall: 1,
    InvalidSignature: 3,
    ReplayedCall: 3,
}


#: Refusals of a login attempt, weighed by the attempt's own reservation (see :meth:`Abuse.reserve`).
RESERVED: frozenset[type[BastionError]] = frozenset({InvalidCredential, AccountLocked})

#: The prefix of a window member that stands for a login attempt still running (see :meth:`Abuse.reserve`).
IN_FLIGHT = "try:"

_UNREAD: Any = object()


def weight_of(error: BastionError) -> int:
    """The weight of a refusal against its origin: the table's, or 0 for one that names a known session.

    An UnknownSession whose sid names a session this server ended (a stale
    tab after a logout, "sign out everywhere else" or a password change;
    ``error.ended`` set by the auth plugin) proves only that a client was
    late, and an ExpiredSession is never in the table: both name a session
    the server made, so nothing was guessed. A sid the server never made, or
    has forgotten, still weighs 1.
    """
    if getattr(error, "ended", False):
        return 0
    return WEIGHTS.get(type(error), 0)


def _settled(entries: list[WindowEntry]) -> list[WindowEntry]:
    """The entries that weigh toward a ban: refusals and failures, not the attempts still running."""
    return [e for e in entries if not e.member.startswith(IN_FLIGHT)]


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
    takes a place of weight 1 in the window before its password is checked
    (:meth:`reserve`), atomically with reading the window, so that however
    many attempts run at once, no more than ``abuse_max`` passwords are ever
    checked for one origin in the window. The place of an attempt still
    running is a member of its own (:data:`IN_FLIGHT`): it counts toward
    that bound, never toward a ban, since most attempts succeed. A failure
    turns it into a weight (:meth:`confirm`); a success gives it back
    (:meth:`release`).

    ``abuse_window`` and ``abuse_max`` are those of the domain's tenant
    (``settings_of(domain)``, built at start-up).
    """

    def __init__(self, state: StateStore, settings_of: Callable[[str], Settings]):
        self.state = state
        self.settings_of = settings_of

    def limits(self, domain: str) -> tuple[int, int]:
        """``(abuse_window, abuse_max)`` of the domain's tenant."""
        settings = self.settings_of(domain)
        return settings.abuse_window, settings.abuse_max

    def enabled(self, domain: str) -> bool:
        """Whether bans are on in the domain (its ``abuse_max`` is not 0)."""
        return bool(self.settings_of(domain).abuse_max)

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
        if not self.enabled(domain):
            return
        if until is _UNREAD:
            until = self.state.get(domain, self.key(origin))
        if isinstance(until, (int, float)) and until > now:
            raise Abusive("too many bad requests from your address; try again later", retry_after=until - now)

    def weigh(self, domain: str, origin: str, error: BastionError, now: float) -> float | None:
        """Add the error's weight for the origin; ban it when the window holds the maximum (return the ban's end)."""
        weight = weight_of(error)
        window, maximum = self.limits(domain)
        if not weight or not maximum or type(error) in RESERVED:
            return None
        entries = self.state.window_add(domain, self.window_key(origin), secrets.token_hex(8), weight, window)
        return self._ban_if_due(domain, origin, entries, now, maximum)

    def reserve(self, domain: str, origin: str, attempt: str, now: float) -> None:
        """Take a place of weight 1 for a login attempt; Abusive (and no place) if the window is full.

        Full means banned (the weight of failures and refusals reached the
        maximum) or, with the attempts still running, as many places taken
        as the maximum: then the refusal says so, with ``retry_after`` 1,
        and ``error.in_flight`` is set (a login in progress is no abuse).
        """
        window, maximum = self.limits(domain)
        if not maximum:
            return
        member = IN_FLIGHT + attempt
        entries = self.state.window_add(domain, self.window_key(origin), member, 1, window)
        others = [e for e in entries if e.member != member]
        if sum(e.weight for e in others) >= maximum:
            self.state.window_discard(domain, self.window_key(origin), member)
            settled = _settled(others)
            if sum(e.weight for e in settled) >= maximum:
                until = _release_time(settled, maximum)
                raise Abusive("too many bad requests from your address; try again later", retry_after=until - now)
            busy = Abusive(f"too many logins in progress from your address (at most {maximum} at once); "
                           "retry after 1 s", retry_after=1)
            busy.in_flight = True  # type: ignore[attr-defined]  # for the security log
            raise busy

    def confirm(self, domain: str, origin: str, attempt: str, now: float) -> float | None:
        """Turn a failed attempt's place into its weight; ban at the maximum (return the ban's end)."""
        window, maximum = self.limits(domain)
        if not maximum:
            return None
        entries = self.state.window_add(domain, self.window_key(origin), attempt, 1, window)
        self.state.window_discard(domain, self.window_key(origin), IN_FLIGHT + attempt)
        return self._ban_if_due(domain, origin, entries, now, maximum)

    def release(self, domain: str, origin: str, attempt: str) -> None:
        """Give back the place of an attempt that succeeded (a correct login weighs nothing)."""
        if self.enabled(domain):
            self.state.window_discard(domain, self.window_key(origin), IN_FLIGHT + attempt)

    def forgive(self, domain: str, origin: str, attempts: list[str]) -> None:
        """Take back the weight of earlier failed attempts (of one account, which then logged in from here)."""
        if self.enabled(domain):
            for attempt in attempts:
                self.state.window_discard(domain, self.window_key(origin), attempt)

    def _ban_if_due(self, domain: str, origin: str, entries: list[WindowEntry], now: float,
                    maximum: int) -> float | None:
        settled = _settled(entries)
        if sum(e.weight for e in settled) >= maximum:
            until = _release_time(settled, maximum)
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

#: The window of a domain's locked usernames, a member each, expiring with its lock: what ``bastion locks`` and
#: ``bastion users`` list, also for usernames no user has (an account's own window is keyed by a hash of its name).
LOCKED = "locked-accounts"

#: The window of the domains that had a lock, a member each, expiring with their latest lock, so that the commands
#: find the locks of domains without users too. It lives in the deployment's own namespace, which no Host names.
LOCKED_DOMAINS = "auth:locked-domains"


class Accounts:
    """Counts failed logins per account and locks it for a while at the limit.

    One window per account holds a member per failed attempt (weight 1,
    named after the attempt) and, while the account is locked, the member
    :data:`LOCK` expiring with the lock. An attempt is refused before its
    password is checked only while the account is locked
    (:meth:`check`): attempts running side by side are never refused for
    running, so eight parallel logins of one user all pass.

    What keeps parallel guesses from passing the limit is that an outcome is
    told only while the account is not locked: a failure is told
    (:meth:`failed`) only if it is one of the first ``account_max_failures``
    of the window, the one that reaches the limit locks the account; a
    success is told (:meth:`succeeded`) only while fewer failures than the
    limit are there. An attempt whose password was checked while other
    attempts locked the account is answered AccountLocked whatever its
    password was, so that no more than ``account_max_failures`` wrong
    passwords are ever told per lock period, whatever the concurrency.

    ``account_window``, ``account_max_failures`` and ``account_lock`` are
    those of the domain's tenant (``settings_of(domain)``, built at start-up).
    """

    def __init__(self, state: StateStore, settings_of: Callable[[str], Settings]):
        self.state = state
        self.settings_of = settings_of

    def limit(self, domain: str) -> int:
        """The failed logins that lock an account of the domain (its ``account_max_failures``; 0: never)."""
        return self.settings_of(domain).account_max_failures

    def check(self, domain: str, username: str, now: float) -> None:
        """AccountLocked while the account is locked: its password is not checked then."""
        if not self.limit(domain):
            return
        until = self.locked_until(domain, username)
        if until is not None:
            raise _locked(until - now)

    def failed(self, domain: str, username: str, attempt: str, now: float) -> float | None:
        """Count a failure and return the end of the lock it starts, if any.

        AccountLocked, the failure not counted, when the account was locked
        meanwhile or the limit is already reached by failures of other
        attempts: its outcome is not told (see the class). At the limit,
        the lock first: from that moment every attempt is refused or hidden;
        then the count restarts.
        """
        settings = self.settings_of(domain)
        limit, lock_for = settings.account_max_failures, settings.account_lock
        if not limit:
            return None
        key = account_key("failures", username)
        entries = self.state.window_add(domain, key, attempt, 1, settings.account_window)
        lock = [e for e in entries if e.member == LOCK]
        failures = [e for e in entries if e.member != LOCK and e.weight]
        if lock or len(failures) > limit:
            self.state.window_discard(domain, key, attempt)
            raise _locked(lock[0].expires - now if lock else lock_for)
        if len(failures) == limit:
            self.state.window_add(domain, key, LOCK, 0, lock_for)
            for entry in failures:
                self.state.window_discard(domain, key, entry.member)
            self.state.window_add(domain, LOCKED, username, 0, lock_for)
            self.state.window_add(PROBE_DOMAIN, LOCKED_DOMAINS, domain, 0, lock_for)
            return now + lock_for
        return None

    def succeeded(self, domain: str, username: str, now: float) -> list[str]:
        """A correct password resets the account's count: return the failed attempts it clears.

        AccountLocked, nothing reset, when the account was locked meanwhile
        or holds as many failures as the limit (their lock is being set):
        its outcome is not told either (see the class). The count is reset
        member by member, never by deleting the window, so that a lock set
        by a concurrent failure stays.
        """
        settings = self.settings_of(domain)
        limit = settings.account_max_failures
        if not limit:
            return []
        key = account_key("failures", username)
        entries = self.state.window_entries(domain, key)
        lock = [e for e in entries if e.member == LOCK]
        failures = [e.member for e in entries if e.member != LOCK and e.weight]
        if lock or len(failures) >= limit:
            raise _locked(lock[0].expires - now if lock else settings.account_lock)
        for member in failures:
            self.state.window_discard(domain, key, member)
        return failures

    def check_open(self, domain: str, username: str, now: float) -> None:
        """AccountLocked, as :meth:`succeeded` would answer, without resetting anything: a right password
        whose login still needs its second factor is told only while the account is not locked (or being
        locked), and resets the count only once the code verified too."""
        settings = self.settings_of(domain)
        limit = settings.account_max_failures
        if not limit:
            return
        entries = self.state.window_entries(domain, account_key("failures", username))
        lock = [e for e in entries if e.member == LOCK]
        failures = [e for e in entries if e.member != LOCK and e.weight]
        if lock or len(failures) >= limit:
            raise _locked(lock[0].expires - now if lock else settings.account_lock)

    def locked_until(self, domain: str, username: str) -> float | None:
        """When the account's lock ends, or None when it is not locked."""
        entries = self.state.window_entries(domain, account_key("failures", username))
        return next((e.expires for e in entries if e.member == LOCK), None)

    def unlock(self, domain: str, username: str) -> bool:
        """End the account's lock and forget its failures (``bastion unlock``); return whether it was locked."""
        locked = self.locked_until(domain, username) is not None
        self.state.delete(domain, account_key("failures", username))
        self.state.window_discard(domain, LOCKED, username)
        return locked

    def locked(self, domain: str) -> list[tuple[str, float]]:
        """The usernames locked in the domain, whether a user has them or not, each with the end of its lock,
        soonest first. The account's own window decides (the listing only names the candidates)."""
        found = []
        for entry in self.state.window_entries(domain, LOCKED):
            until = self.locked_until(domain, entry.member)
            if until is not None:
                found.append((entry.member, until))
        return sorted(found, key=lambda pair: (pair[1], pair[0]))

    def locked_domains(self) -> list[str]:
        """The domains that had a lock lately (their locks may have been ended since), sorted."""
        return sorted(entry.member for entry in self.state.window_entries(PROBE_DOMAIN, LOCKED_DOMAINS))


def _locked(retry_after: float) -> AccountLocked:
    return AccountLocked("too many failed logins for this account; try again later", retry_after=retry_after)
