"""The storage driver protocol: what a storage plugin implements.

A driver keeps two kinds of data, both partitioned by domain in every key:

* **records** — ``(domain, model, id, vsn, data)`` with index entries, read by
  id or by an equality filter on indexed fields in creation order, and written
  only through :meth:`RecordStore.commit`, which checks every version and
  applies every change atomically, or none; for a model that keeps history,
  the same commit appends each change to its record's **history** (at most the
  number of versions the change names, oldest dropped), read back by
  :meth:`RecordStore.history`; a removed record keeps the history it had
  until as many removals as its delete names (``keep_removed``) have
  followed in its domain and model, dropped by the commit that removes, so
  that what a domain holds of removed records stays bounded however many it
  removes;
* **short-lived state** for the auth plugin — keys with a time to live, atomic
  add-if-absent, atomic increments, and *windows* (sets of members that each
  expire on their own, for sliding-window counters and per-user session sets).

Every time to live follows the clock the driver was opened with, so tests can
move time without sleeping. Drivers translate their backend's connection
errors into :class:`kernel.core.errors.ServiceUnavailable`; a conflict is
:class:`kernel.core.errors.VersionConflict`. ``kernel.testing`` holds the suite that
proves a driver keeps this contract.

No driver stores what it cannot give back: every string written (record data,
its keys at any depth, index values, record ids, state values and window
members) must be encodable as UTF-8, so a lone surrogate such as ``"\\ud800"``
is refused with TypeError before anything is written (:func:`check_json`,
:func:`check_change`). Record ids follow one rule (:func:`is_record_id`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal, Protocol, runtime_checkable

#: What an index entry may hold.
Scalar = str | int | float | bool | None

class Capability(enum.StrEnum):
    """What a driver may declare in its ``capabilities`` (a frozenset; none by default), and the kernel reads.

    Members are strings too: a driver that declares ``"paged_select"`` declares :attr:`PAGED_SELECT`.
    """

    #: ``select`` reads one page only when given ``after`` and ``limit`` (else the kernel cuts the whole answer).
    PAGED_SELECT = "paged_select"
    #: The data lives in this process: gunicorn then runs one worker, and ``bastion check --deploy`` says so.
    PROCESS_LOCAL = "process_local"
    #: The data outlives the driver: a new driver on the same URL finds it (the suite's persistence tests).
    PERSISTENT = "persistent"
    #: The driver counts the live keys of a prefix cheaply (:class:`LiveCounts`), for the sessions gauge.
    COUNT_LIVE = "count_live"
    #: The driver lists its tenants and moves whole tenants (:class:`TenantStore`): ``bastion tenants``,
    #: ``export``, ``import``, ``copy`` and ``delete-tenant``.
    TENANTS = "tenants"


#: The capability of a driver whose ``select`` takes ``after`` and ``limit`` and reads one page only.
PAGED_SELECT = Capability.PAGED_SELECT

#: The capability of a driver that lists, streams, loads and deletes whole tenants (:class:`TenantStore`).
TENANTS = Capability.TENANTS


def capabilities_of(driver: object) -> frozenset[str]:
    """What a driver declares it can do (its ``capabilities`` attribute; none when it has none)."""
    return frozenset(getattr(driver, "capabilities", ()))

#: How many removals of a model, in a domain, a removed record's history outlives when the model names no
#: ``history_keep_removed`` (and a delete no ``keep_removed``).
DEFAULT_HISTORY_KEEP_REMOVED = 100

#: Removed histories beyond the bound a commit drops on top of one per removal it makes: what brings a bound
#: lowered since (or histories kept before there was one) back within it, a few at a time.
REMOVED_HISTORY_STEP = 16


@dataclass(frozen=True, slots=True, init=False)
class StoredRecord:
    """A record as the driver stores it."""

    model: str
    id: str
    vsn: int
    data: dict[str, Any]

    def __init__(self, model: str, id: str, vsn: int, data: dict[str, Any]):
        # The slots' own setters: a frozen dataclass's __init__ calls object.__setattr__ by name per field,
        # twice the cost, and a select makes one of these per record.
        _stored_model(self, model)
        _stored_id(self, id)
        _stored_vsn(self, vsn)
        _stored_data(self, data)


_stored_model, _stored_id, _stored_vsn, _stored_data = (StoredRecord.__dict__[name].__set__
                                                        for name in ("model", "id", "vsn", "data"))


@dataclass(frozen=True, slots=True)
class Change:
    """One write of a unit of work.

    ``insert``: the id must be absent; the record is stored with ``vsn`` 1.
    ``update``: the stored version must equal ``vsn``; it becomes ``vsn + 1``.
    ``delete``: the stored version must equal ``vsn``; the record goes.
    ``index`` maps indexed field names to scalar values (empty for deletes).

    ``history`` is how many versions the record's history keeps once this
    change is in it (its model's ``history_limit``); 0, the default, writes no
    history. When it is set, the commit that applies the change also appends
    ``RecordVersion(history_vsn, <the driver's clock>, by, data)`` to the record's
    history and drops its oldest entries beyond ``history`` — in the same
    atomic step, so a commit that fails writes no history either. ``by`` is
    who committed it (a username, or None outside a signed call).

    ``keep_removed`` bounds what removed records keep (its model's
    ``history_keep_removed``); only a delete with ``history`` set reads it.
    Such a delete is a *removal*: the removals of a model in a domain are
    numbered 1, 2, 3, ... in commit order (those of one commit in the order
    of its changes). A removed record keeps the history it had when it was
    removed until ``keep_removed`` more removals of its model in its domain
    have followed its latest one: the commit that makes the ``keep_removed``-th
    drops that history (every entry up to its last deletion: all of it,
    unless the id was inserted again since, whose later versions stay), in
    the same atomic step. So at most ``keep_removed`` removed records of a
    model keep history in a domain; 0 drops a record's history with its
    removal. Each such commit drops the histories of the removed records
    beyond the bound, oldest removal first: all of them, up to one per
    removal it makes plus :data:`REMOVED_HISTORY_STEP` (bounded work per
    write, never a scan), so a bound lowered since is reached over the next
    removals. The bound of a commit's removals of one model is the smallest
    they name (the unit of work names its model's, the same for each).
    """

    op: Literal["insert", "update", "delete"]
    model: str
    id: str
    vsn: int
    data: dict[str, Any] | None = None
    index: Mapping[str, Scalar] | None = None
    history: int = 0
    by: str | None = None
    keep_removed: int = DEFAULT_HISTORY_KEEP_REMOVED

    @property
    def new_vsn(self) -> int:
        """The version the record has after the change (0 once deleted)."""
        return {"insert": 1, "update": self.vsn + 1, "delete": 0}[self.op]

    @property
    def history_vsn(self) -> int:
        """The version this change's history entry records: the new one; for a delete, the one after the last."""
        return 1 if self.op == "insert" else self.vsn + 1


@dataclass(frozen=True, slots=True)
class RecordVersion:
    """One entry of a record's history: its version, when it was committed (driver clock), by whom, its data.

    ``data`` is the record's data as that version stored it, or None for the
    deletion (whose ``vsn`` is the one after the last version stored).
    """

    vsn: int
    at: float
    by: str | None
    data: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """``{"vsn", "at", "by", "data"}``, the JSON form ``db.history`` returns."""
        return {"vsn": self.vsn, "at": self.at, "by": self.by, "data": self.data}


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

        An ``id`` that breaks the record-id rule (:func:`is_record_id`) finds
        nothing: None, without asking the backend. Returned data belongs to
        the caller: a driver never hands out a reference to what it keeps
        (the same holds for ``select``).
        """

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        """Return the model's records whose index entries equal every ``where`` item, oldest first.

        A driver that declares :data:`PAGED_SELECT` takes the two keywords,
        and reads no more than they ask for: ``after``, a record id, keeps
        only the records created after that one (its own ``where`` items
        need not match; :class:`kernel.core.errors.RecordNotFound` when the domain
        has no record of the model with that id), and ``limit``, an int of at
        least 1, keeps the first that many. The kernel checks both before it
        calls; for a driver without the capability it pages the whole answer,
        and never passes them (such a driver may leave them out).
        """

    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        """Check every change's version and apply them all atomically, or raise VersionConflict and apply none.

        Every change first passes :func:`check_change` (TypeError, nothing
        written): a valid record id, JSON data, scalar index values, and no
        string that UTF-8 cannot encode. A change whose ``history`` is set is
        appended to its record's history in the same atomic step, and a
        delete among them drops the histories of the removed records its
        ``keep_removed`` leaves out (see :class:`Change`); a change without
        ``history`` costs nothing more.
        """

    def history(self, domain: str, model: str, id: str) -> list[RecordVersion]:
        """Return the kept versions of a record, oldest first (the last one a deletion, if it was deleted).

        A record's history outlives the record, for as long as its removal is
        among the last ``keep_removed`` of its model in its domain (see
        :class:`Change`): a deletion is its last entry, and an insert of the
        same id later appends after it. Empty when nothing was kept (a model
        without history, an unknown id, a removed record whose history was
        dropped, an id that breaks the record-id rule, which finds nothing
        without asking the backend). Returned data belongs to the caller.
        """

    def domains(self, model: str) -> list[str]:
        """Return the domains holding records of ``model`` (administration only: names, never data)."""


@runtime_checkable
class StateStore(Protocol):
    """Short-lived state with times to live, partitioned by domain.

    Plain keys and windows share one namespace per domain; ``delete`` removes
    either kind. Values are JSON values, checked by :func:`check_json` before
    anything is written (TypeError); window members are strings UTF-8 can
    encode (:func:`check_text`).

    Expired entries count as absent at once, and the backend reclaims them by
    itself, amortised over the writes (never a full scan per call): what it
    holds stays bounded by what is live, however long the load lasts.
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

    def add(self, domain: str, key: str, value: Any, ttl: float, if_live: str | None = None) -> bool:
        """Store a value only if the key is absent or expired; return whether it was stored. Atomic.

        With ``if_live``, the value is stored only while that other plain key
        of the same domain is live (an absent, expired or deleted key, or a
        window, counts as absent), checked in the same atomic step: an add
        that starts after ``delete(domain, if_live)`` returned never stores.
        """

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
class LiveCounts(Protocol):
    """What a driver that declares :attr:`Capability.COUNT_LIVE` also offers."""

    def count_live(self, prefix: str) -> int:
        """How many live plain keys start with ``prefix``, in every domain (the auth plugin's sessions gauge)."""


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """One record of a tenant as it moves between backends: what export reads and import writes.

    ``vsn`` and ``data`` are the live record's (``vsn`` 0 and ``data`` None
    for an id that holds only kept history: a removed record's), ``history``
    its kept versions oldest first, and ``removal`` the number of its latest
    removal among its model's in its domain when its history is kept as a
    removed record's (None otherwise). ``index`` is what import writes as the
    record's index entries (its model's ``index``); export leaves it None.
    """

    model: str
    id: str
    vsn: int
    data: dict[str, Any] | None
    history: tuple[RecordVersion, ...] = ()
    removal: int | None = None
    index: Mapping[str, Scalar] | None = None


@dataclass(frozen=True)
class TenantCounts:
    """What a backend holds for one tenant: live records and history entries per model, live state per kind.

    A state key's kind is the part of its key before the first ``:``
    (``session`` for ``session:<sid>``); a window counts as one key.
    """

    records: dict[str, int] = dataclass_field(default_factory=dict)
    history: dict[str, int] = dataclass_field(default_factory=dict)
    state: dict[str, int] = dataclass_field(default_factory=dict)

    @property
    def holds_data(self) -> bool:
        """Whether the tenant holds records or kept history (what import refuses to overwrite)."""
        return any(self.records.values()) or any(self.history.values())

    @property
    def empty(self) -> bool:
        """Whether the tenant holds nothing at all (records, history or live state)."""
        return not (self.holds_data or any(self.state.values()))


def state_kind(key: str) -> str:
    """The kind of a state key: the part before its first ``:`` (the whole key without one)."""
    return key.partition(":")[0]


@runtime_checkable
class TenantStore(Protocol):
    """What a driver that declares :attr:`Capability.TENANTS` also offers: whole tenants, for administration.

    None of these is on a request's path: they may scan a domain (or, for
    :meth:`tenants`, the backend).
    """

    def tenants(self) -> dict[str, TenantCounts]:
        """Every domain holding records, kept history or live state, sorted, with what it holds.

        One pass over the backend (never one per domain): ``bastion tenants``
        lists ten thousand tenants with it. Never :data:`PROBE_DOMAIN`.
        """

    def tenant_counts(self, domain: str) -> TenantCounts:
        """How many live records and history entries the domain holds per model, and live state keys per kind."""

    def tenant_records(self, domain: str, model: str) -> Iterator[TenantRecord]:
        """Yield every record of ``model`` in the domain with its history, then every id holding only history.

        Live records come in creation order, each with its version, data,
        kept history and removal number; then the ids whose record is gone
        but whose history is kept (``vsn`` 0, ``data`` None), in the order
        of their ids (by code point, as Python sorts them). The driver
        reads them a page at a time: memory stays bounded whatever the
        domain holds. Returned data belongs to the caller.
        """

    def load_tenant(self, domain: str, records: Iterable[TenantRecord], replace: bool = False) -> int:
        """Write ``records`` into the domain as they are (ids, versions, history, removal numbers); return how many.

        All or nothing, even if the process is killed halfway: the domain
        then holds either what it held before or every record given. Live
        records are created in the order given. Each record passes the
        checks of :func:`check_tenant_record` first (TypeError), and an
        exception raised by ``records`` itself aborts the load, writing
        nothing. Without ``replace`` a domain that already holds records or
        history is refused (VersionConflict); with it, everything the domain
        held — records, history, and its short-lived state — is replaced.
        """

    def delete_tenant(self, domain: str) -> bool:
        """Remove every record, index entry, history entry, removal number and state key of the domain.

        Returns whether it held anything. Other domains are untouched.
        """


@runtime_checkable
class Driver(RecordStore, StateStore, Protocol):
    """A storage driver: records, short-lived state and its own health."""

    def ping(self) -> None:
        """Return when the backend accepts writes; raise ServiceUnavailable otherwise.

        A read is not enough (a full disk still answers reads): ping writes a
        short-lived probe entry in the deployment's own namespace, under
        :data:`PROBE_DOMAIN`, which no tenant can name, removed or expiring at
        once, and never counted by :meth:`state_count`.
        """

    def state_count(self) -> int:
        """Return how many state entries the backend holds for this deployment (administration, tests, benchmarks).

        Plain keys and window members, live or awaiting reclamation, in every
        domain. It may scan everything: never call it on a request's path.
        """

    def close(self) -> None:
        """Release connections and files."""


# ---------------------------------------------------------------------------
# Helpers shared by drivers and the unit of work
# ---------------------------------------------------------------------------


#: The longest record id, in characters.
MAX_ID_LENGTH = 256

#: The domain of the probe entry ``ping`` writes: no Host header can name it
#: (kernel.core.hosts accepts letters, digits, ``_``, ``-``, dots and bracketed IPv6).
PROBE_DOMAIN = "#probe"


def is_text(value: str) -> bool:
    """Whether a string can be encoded as UTF-8 (no lone surrogate): the only strings a driver stores."""
    if value.isascii():  # the usual case, and cheap
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text_message(value: str) -> str:
    return f"{value[:40]!r} is not text UTF-8 can encode (a lone surrogate)"


def _not_text(value: str, where: str) -> TypeError:
    return TypeError(f"{where}: {_not_text_message(value)}")


def check_text(value: Any, where: str = "value") -> None:
    """Raise TypeError unless ``value`` is a string UTF-8 can encode."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: {type(value).__name__} is not a string")
    if not is_text(value):
        raise _not_text(value, where)


def is_record_id(id: object) -> bool:
    """The record-id rule: a non-empty string of at most MAX_ID_LENGTH characters, without NUL, UTF-8 encodable.

    Every driver and the unit of work apply it: an id breaking it finds
    nothing and is never written.
    """
    return isinstance(id, str) and 0 < len(id) <= MAX_ID_LENGTH and "\x00" not in id and is_text(id)


def check_record_id(id: object, where: str = "record id") -> None:
    """Raise TypeError unless ``id`` follows the record-id rule (:func:`is_record_id`)."""
    if not is_record_id(id):
        shown = repr(id)[:60] if isinstance(id, str) else type(id).__name__
        raise TypeError(f"{where} {shown}: a record id is a non-empty string of at most {MAX_ID_LENGTH} "
                        "characters, without NUL, that UTF-8 can encode")


def check_change(change: Change) -> None:
    """Raise TypeError unless a driver can store ``change`` and give it back: id, data, index values, history."""
    check_record_id(change.id, f"{change.model}: record id")
    if change.history or change.by is not None:
        if type(change.history) is not int or change.history < 0:
            raise TypeError(f"{change.model} {change.id}: history {change.history!r} is not a number of versions")
        if type(change.keep_removed) is not int or change.keep_removed < 0:
            raise TypeError(f"{change.model} {change.id}: keep_removed {change.keep_removed!r} is not a number "
                            "of removals")
        if change.by is not None:
            check_text(change.by, f"{change.model} {change.id}: history author")
    if change.op == "delete":
        return
    where = f"{change.model} {change.id}"
    check_json(change.data, where)
    for field, value in (change.index or {}).items():
        check_text(field, f"{where} index field")
        check_scalar(value, f"{where} index {field}")


def check_tenant_record(record: TenantRecord) -> None:
    """Raise TypeError unless a driver can load ``record``: id, version, data, index values and history entries."""
    where = f"{record.model} {record.id!r}"
    check_text(record.model, "model name")
    check_record_id(record.id, f"{record.model}: record id")
    if type(record.vsn) is not int or record.vsn < 0 or (record.vsn == 0) != (record.data is None):
        raise TypeError(f"{where}: version {record.vsn!r} with data {type(record.data).__name__}: a live record has "
                        "a version of 1 or more and data, a removed one version 0 and no data")
    if record.data is not None:
        if not isinstance(record.data, dict):
            raise TypeError(f"{where}: data is {type(record.data).__name__}, not an object")
        check_json(record.data, where)
    if record.removal is not None and (type(record.removal) is not int or record.removal < 1):
        raise TypeError(f"{where}: removal {record.removal!r} is not a number of 1 or more")
    for name, value in (record.index or {}).items():
        check_text(name, f"{where} index field")
        check_scalar(value, f"{where} index {name}")
    for entry in record.history:
        if type(entry.vsn) is not int or entry.vsn < 1 or not isinstance(entry.at, (int, float)) \
                or isinstance(entry.at, bool) or not math.isfinite(entry.at):
            raise TypeError(f"{where}: history entry {entry.vsn!r} at {entry.at!r}: a version of 1 or more, a time")
        if entry.by is not None:
            check_text(entry.by, f"{where} history author")
        if entry.data is not None and not isinstance(entry.data, dict):
            raise TypeError(f"{where}: history entry {entry.vsn}: data is not an object")
        check_json(entry.data, f"{where} history entry {entry.vsn}")


def check_json(value: Any, where: str = "value") -> None:
    """Raise TypeError unless ``value`` is a JSON value (finite numbers, string keys, UTF-8 encodable strings).

    It runs on every write, so the walk builds no text unless it finds a
    problem (the path to it is put together on the way back).
    """
    problem = _json_problem(value)
    if problem is not None:
        raise TypeError(f"{where}{problem[0]}: {problem[1]}")


def _json_problem(value: Any) -> tuple[str, str] | None:
    """None for a JSON value; else the path to the first problem (``.key[2]``) and what it is."""
    kind = type(value)  # exact types first: the common case, and the fastest test
    if kind is str:
        return None if value.isascii() or is_text(value) else ("", _not_text_message(value))
    if value is None or kind is bool or kind is int:
        return None
    if kind is dict:
        return _items_problem(value)
    if kind is list:
        return _list_problem(value)
    # Then subclasses (an IntEnum, a str or dict subclass): JSON encodes them as their base type.
    if isinstance(value, str):
        return None if value.isascii() or is_text(value) else ("", _not_text_message(value))
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", f"{value!r} is not a JSON number")
    if isinstance(value, dict):
        return _items_problem(value)
    if isinstance(value, list):
        return _list_problem(value)
    return "", f"{kind.__name__} is not a JSON value"


def _items_problem(value: dict) -> tuple[str, str] | None:
    for key, item in value.items():
        if not isinstance(key, str):
            return "", f"key {key!r} is not a string"
        if not key.isascii() and not is_text(key):
            return "", "key " + _not_text_message(key)
        problem = _json_problem(item)
        if problem is not None:
            return f".{key}{problem[0]}", problem[1]
    return None


def _list_problem(value: list) -> tuple[str, str] | None:
    for i, item in enumerate(value):
        problem = _json_problem(item)
        if problem is not None:
            return f"[{i}]{problem[0]}", problem[1]
    return None


def check_scalar(value: Any, where: str = "index value") -> None:
    """Raise TypeError unless ``value`` can be an index entry."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"{where}: {type(value).__name__} is not a scalar")
    check_json(value, where)


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
