"""The storage driver protocol: what a storage plugin implements.

A driver keeps two kinds of data, both partitioned by domain in every key:

* **records** — ``(domain, model, id, vsn, data)`` with index entries, read by
  id or by an equality filter on indexed fields in creation order, and written
  only through :meth:`RecordStore.commit`, which checks every version and
  applies every change atomically, or none;
* **short-lived state** for the auth plugin — keys with a time to live, atomic
  add-if-absent, atomic increments, and *windows* (sets of members that each
  expire on their own, for sliding-window counters and per-user session sets).

Every time to live follows the clock the driver was opened with, so tests can
move time without sleeping. Drivers translate their backend's connection
errors into :class:`kernel.errors.ServiceUnavailable`; a conflict is
:class:`kernel.errors.VersionConflict`. ``kernel.testing`` holds the suite that
proves a driver keeps this contract.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

#: What an index entry may hold.
Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as the driver stores it."""

    model: str
    id: str
    vsn: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One write of a unit of work.

    ``insert``: the id must be absent; the record is stored with ``vsn`` 1.
    ``update``: the stored version must equal ``vsn``; it becomes ``vsn + 1``.
    ``delete``: the stored version must equal ``vsn``; the record goes.
    ``index`` maps indexed field names to scalar values (empty for deletes).
    """

    op: Literal["insert", "update", "delete"]
    model: str
    id: str
    vsn: int
    data: dict[str, Any] | None = None
    index: Mapping[str, Scalar] | None = None

    @property
    def new_vsn(self) -> int:
        """The version the record has after the change (0 once deleted)."""
        return {"insert": 1, "update": self.vsn + 1, "delete": 0}[self.op]


@dataclass(frozen=True, slots=True)
class WindowEntry:
    """A member of a window, its weight and when it expires (driver clock)."""

    member: str
    weight: int
    expires: float


@runtime_checkable
class RecordStore(Protocol):
    """Versioned records, partitioned by domain."""

    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        """Return the record, or None when the domain has no such record.

        Returned data belongs to the caller: a driver never hands out a
        reference to what it keeps (the same holds for ``select``).
        """

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None) -> list[StoredRecord]:
        """Return the model's records whose index entries equal every ``where`` item, oldest first."""

    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        """Check every change's version and apply them all atomically, or raise VersionConflict and apply none."""

    def domains(self, model: str) -> list[str]:
        """Return the domains holding records of ``model`` (administration only: names, never data)."""


@runtime_checkable
class StateStore(Protocol):
    """Short-lived state with times to live, partitioned by domain.

    Plain keys and windows share one namespace per domain; ``delete`` removes
    either kind. Values are JSON values.
    """

    def get(self, domain: str, key: str) -> Any:
        """Return the live value of a key, or None."""

    def get_many(self, domain: str, keys: Sequence[str]) -> list[Any]:
        """Return the live values of several keys (None for each absent one), in one round trip."""

    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        """Store a value that expires ``ttl`` seconds from now."""

    def replace(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        """Store a value only if the key is live; return whether it was stored. Atomic.

        Whoever deleted the key meanwhile wins: a replace never brings it back.
        """

    def add(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        """Store a value only if the key is absent or expired; return whether it was stored. Atomic."""

    def delete(self, domain: str, key: str) -> bool:
        """Remove a key or window; return whether a live one existed."""

    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to a counter and return the new value. Atomic.

        A missing or expired counter starts at 0 and expires ``ttl`` seconds
        from now; later increments keep that expiry (a fixed window).
        """

    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        """Add (or replace) a member expiring ``ttl`` seconds from now; return the live entries. Atomic.

        Entries come back oldest expiry first, the new one included.
        """

    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        """Return the live entries of a window, oldest expiry first."""

    def window_discard(self, domain: str, key: str, member: str) -> bool:
        """Remove one member; return whether it was live."""


@runtime_checkable
class Driver(RecordStore, StateStore, Protocol):
    """A storage driver: records, short-lived state and its own health."""

    def ping(self) -> None:
        """Return when the backend answers; raise ServiceUnavailable otherwise."""

    def close(self) -> None:
        """Release connections and files."""


# ---------------------------------------------------------------------------
# Helpers shared by drivers and the unit of work
# ---------------------------------------------------------------------------


def check_json(value: Any, where: str = "value") -> None:
    """Raise TypeError unless ``value`` is a JSON value (finite numbers, string keys)."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not a JSON number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            check_json(item, f"{where}.{key}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a JSON value")


def check_scalar(value: Any, where: str = "index value") -> None:
    """Raise TypeError unless ``value`` can be an index entry."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"{where}: {type(value).__name__} is not a scalar")
    check_json(value, where)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)


def dumps(value: Any) -> str:
    """Encode a JSON value compactly and deterministically, as drivers store it."""
    return _ENCODER.encode(value)


def index_token(value: Scalar) -> str:
    """Encode an index value so that ``1``, ``True``, ``"1"`` and ``1.0``'s kinds never collide."""
    if isinstance(value, bool):
        return "b:" + ("1" if value else "0")
    if isinstance(value, int):
        return "n:" + repr(value)
    if isinstance(value, float):
        return "n:" + (repr(int(value)) if value.is_integer() else repr(value))
    if value is None:
        return "z:"
    return "s:" + value
