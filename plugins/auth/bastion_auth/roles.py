"""The domain's roles epoch: what lets a signed call use the roles its session carries instead of reading them.

A user's roles live in the user's record (the records store). Reading them
at every call costs a records read per call; carrying them in the session
(the state store, read anyway) would keep a change of roles from counting
until the user logs in again. The epoch joins the two:

* **A change of roles** (:meth:`RolesEpoch.changed`, after the user's record
  is written) sets the domain's epoch to a new random value.
* **A call** reads the epoch in the same round trip as its session and the
  origin's ban. When the session carries roles read under that same epoch,
  they are the user's roles now; otherwise the call reads the user's record,
  uses those roles, and stores them in the session with the epoch it read
  *before* the record, so that they are never newer than what they claim.

Why this is safe: a change of roles that ended before a call began wrote the
record, then a new epoch. If the call then finds the session's epoch equal
to the current one, the session's roles were read after that epoch was
set, so after the record was written: they include the change. A session
written concurrently with older roles carries an older epoch, and its next
call reads the record again. The epoch is kept for as long as a session can
live and be remembered (``absolute_timeout`` plus ``idle_timeout``), so that
when it expires no session read before it remains, and "no epoch" again
means "no change since every live session's roles were read".

One change of roles makes every session of its domain read the record once
more, at its next call: changes are rare, calls are not.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from kernel import Settings, StateStore

#: The state key of a domain's roles epoch.
EPOCH_KEY = "roles-epoch"


class RolesEpoch:
    """Sets a domain's roles epoch when a user's roles change."""

    def __init__(self, state: StateStore, settings_of: Callable[[str], Settings]):
        self.state = state
        self.settings_of = settings_of

    def ttl(self, domain: str) -> int:
        """Seconds a domain's epoch is kept: as long as a session of its tenant can live and be remembered."""
        settings = self.settings_of(domain)
        return settings.absolute_timeout + settings.idle_timeout

    def changed(self, domain: str) -> None:
        """Say that a user's roles changed in ``domain`` (after the record is written): a new epoch."""
        self.state.set(domain, EPOCH_KEY, secrets.token_hex(8), self.ttl(domain))
