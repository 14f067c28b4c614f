"""The storage API: models, records and the unit of work.

(Over 500 lines on purpose: a record, its model's registration and the unit of work that tracks it are one
mechanism — the unit of work builds records from registrations and commits what their setters mark — and every
path from ``storage()`` to ``Driver.commit`` reads in order here.)

Written the way the Fanery tutorial writes it::

    with storage() as db:
        record = db.insert(Todo, text="Play with Fanery")
    Todo.to_dict(record)   # {'id': ..., 'vsn': 1, ...}

Nothing reaches the driver until the block exits without an exception; then
every inserted or changed record is validated (the model's ``validate``, then
the ``bastion_validate`` hook) and all changes are committed atomically with
their versions checked, or none is. A unit of work always works in the current
request's domain: there is no way to name another one.

A model is a plain class with four optional classmethods:

``initialize(record)``  fill defaults (``record.merge(done=False, text='')``)
``validate(record)``    return an :class:`Errors` (or a nested dict), empty when valid
``index(record)``       return ``{field: scalar}`` to filter ``select`` on
``to_dict(record)``     the JSON form services return

and optional class attributes: ``history = True`` makes the storage keep
every committed version of each record (``db.history(Model, id)``), in the
same atomic commit as the record itself, at most ``history_limit`` of them
(:data:`DEFAULT_HISTORY_LIMIT` unless the model says otherwise), oldest
dropped; a removed record keeps its history until ``history_keep_removed``
more records of its model have been removed in its domain
(:data:`DEFAULT_HISTORY_KEEP_REMOVED` unless the model says otherwise), so
that a domain holds the history of at most that many removed records.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

from kernel.core import context
from kernel.core.driver import (
    DEFAULT_HISTORY_KEEP_REMOVED,
    Change,
    Driver,
    Scalar,
    StoredRecord,
    check_json,
    check_record_id,
    check_scalar,
    is_record_id,
)
from kernel.core.errors import RecordNotFound, ValidationError, VersionConflict

_MISSING = object()

#: How many versions of a record a model with ``history = True`` keeps when it names no ``history_limit``.
DEFAULT_HISTORY_LIMIT = 100


class Errors(dict):
    """A nested, auto-vivifying mapping of validation errors.

    ``errors.text.invalid = "  "`` creates ``{"text": {"invalid": "  "}}``.
    Empty branches do not count: ``bool(errors)`` is True only when some leaf
    was set.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self[name]

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __missing__(self, key: str) -> Errors:
        child = Errors()
        dict.__setitem__(self, key, child)
        return child

    def __bool__(self) -> bool:
        return any(not isinstance(v, Errors) or bool(v) for v in self.values())

    def to_dict(self) -> dict[str, Any]:
        """Return plain nested dicts with empty branches pruned."""
        out = {}
        for key, value in self.items():
            if isinstance(value, Errors):
                if value:
                    out[key] = value.to_dict()
            else:
                out[key] = value
        return out

    def merge(self, other: Mapping[str, Any] | None) -> None:
        """Merge another (nested) mapping of errors into this one."""
        for key, value in (other or {}).items():
            if isinstance(value, Mapping):
                self[key].merge(value)
            else:
                self[key] = value


class Record:
    """A record of a unit of work: ``_id``, ``_vsn``, ``_model`` and data fields as attributes.

    Assigning a field marks the record changed, and it is saved when the unit
    of work exits.
    """

    __slots__ = ("_model", "_id", "_vsn", "_data", "_dirty", "_fields")

    def __init__(self, model: type, id: str, vsn: int, data: dict[str, Any], fields: frozenset[str] | None = None):
        # The slots' own setters (bound below the class): half the cost of object.__setattr__ by name.
        _set_model(self, model)
        _set_id(self, id)
        _set_vsn(self, vsn)
        _set_data(self, data)
        _set_dirty(self, False)
        _set_fields(self, fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"{self._model.__name__} record has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AttributeError(f"{name!r} is not a data field")
        fields = self._fields  # the model's declared fields, from its registration (None: it declares none)
        if fields is not None and name not in fields and name not in self._data:
            raise AttributeError(f"{self._model.__name__} has no field {name!r}; its fields are what its initialize "
                                 f"sets: {', '.join(sorted(fields)) or 'none'}")
        if self._data.get(name, _MISSING) != value or type(self._data.get(name)) is not type(value):
            self._data[name] = value
            object.__setattr__(self, "_dirty", True)

    def __delattr__(self, name: str) -> None:
        if self._data.pop(name, _MISSING) is not _MISSING:
            object.__setattr__(self, "_dirty", True)

    def merge(self, **fields: Any) -> Record:
        """Set several fields at once; return the record."""
        for name, value in fields.items():
            setattr(self, name, value)
        return self

    def get(self, name: str, default: Any = None) -> Any:
        """Return a field's value, or ``default``."""
        return self._data.get(name, default)

    def fields(self) -> dict[str, Any]:
        """Return a copy of the data fields."""
        return copied(self._data)

    def __repr__(self) -> str:
        # The field names, never their values: a record may hold a password hash, and reprs end up in logs.
        return f"<{self._model.__name__} {self._id} v{self._vsn} fields: {', '.join(self._data)}>"


_set_model, _set_id, _set_vsn, _set_data, _set_dirty, _set_fields = (
    Record.__dict__[name].__set__ for name in Record.__slots__)


def _field_property(name: str) -> property:
    def get(self: Record) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"{self._model.__name__} record has no field {name!r}") from None

    return property(get, doc=f"The {name!r} field.")


def _record_class(model: type, fields: frozenset[str]) -> type[Record]:
    """A subclass of :class:`Record` reading each declared field through a property (never a name Record
    itself has: ``get``, ``merge``, ``fields``, ...; those stay methods, read with ``record.get(name)``)."""
    names = sorted(name for name in fields if name.isidentifier() and not name.startswith("_")
                   and not hasattr(Record, name))
    namespace: dict[str, Any] = {"__slots__": (), "__qualname__": f"Record[{model.__name__}]"}
    namespace.update({name: _field_property(name) for name in names})
    return type("Record", (Record,), namespace)


@dataclass(frozen=True)
class ModelInfo:
    """What the kernel knows of a registered model.

    ``fields`` are the fields ``initialize`` sets, with ``defaults`` their
    values: a record read back gets the default of every field it lacks (a
    field added to the model), and a field that is no longer one (removed
    from the model) is dropped at the record's next write. A model without
    ``initialize`` has no declared fields (None) and keeps whatever it stores.
    ``history`` is how many versions of each record the storage keeps (the
    model's ``history_limit`` when it says ``history = True``), 0 for none;
    ``keep_removed`` how many removals of the model in a domain a removed
    record's history outlives (its ``history_keep_removed``).
    """

    cls: type
    name: str
    index_fields: frozenset[str]
    fields: frozenset[str] | None = None
    defaults: Mapping[str, Any] | None = None
    history: int = 0
    keep_removed: int = DEFAULT_HISTORY_KEEP_REMOVED
    #: The class of the model's records: for a model that declares its fields, :class:`Record` with a property per
    #: field, so that reading ``record.text`` is one dictionary lookup rather than a failed attribute lookup followed
    #: by ``__getattr__`` (a field absent from a record still raises AttributeError, as ``__getattr__`` does).
    record_class: type[Record] = dataclass_field(default=Record, compare=False)

    def record(self, id: str, vsn: int, data: dict[str, Any]) -> Record:
        """A record of this model: it knows the model's fields (to refuse a field the model does not have)."""
        return self.record_class(self.cls, id, vsn, data, self.fields)

    def complete(self, data: dict[str, Any]) -> dict[str, Any]:
        """Give ``data`` (read from a driver, owned by the caller) the default of each field it lacks."""
        if self.fields is not None and not self.fields.issubset(data):
            for name in self.fields - data.keys():
                data[name] = copied_value(self.defaults[name])  # type: ignore[index]
        return data

    def shaped(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (owned by the caller) with exactly the model's fields: :meth:`complete`, then :meth:`stored`."""
        if self.fields is None or self.fields == data.keys():
            return data
        return self.stored(self.complete(data))

    def stored(self, data: dict[str, Any]) -> dict[str, Any]:
        """The data to write: without the fields that are no longer the model's."""
        if self.fields is None or self.fields.issuperset(data):
            return data
        return {name: value for name, value in data.items() if name in self.fields}

    def initialize(self, record: Record) -> None:
        """Call the model's ``initialize``, if any."""
        init = getattr(self.cls, "initialize", None)
        if init is not None:
            init(record)

    def index(self, record: Record) -> dict[str, Scalar]:
        """Return the record's index entries."""
        fn = getattr(self.cls, "index", None)
        entries = dict(fn(record) or {}) if fn is not None else {}
        for field, value in entries.items():
            check_scalar(value, f"{self.name}.index()[{field!r}]")
        return entries

    def validate(self, record: Record) -> Errors:
        """Return the model's own validation errors."""
        errors = Errors()
        fn = getattr(self.cls, "validate", None)
        if fn is not None:
            errors.merge(fn(record))
        return errors


class Models:
    """The registry of models, by class and by name."""

    def __init__(self, classes: Iterable[type] = ()):
        self._by_cls: dict[type, ModelInfo] = {}
        self._by_name: dict[str, ModelInfo] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type) -> ModelInfo:
        """Register a model class under ``cls.__model__`` or its class name."""
        if not isinstance(cls, type):
            raise TypeError(f"bastion_models returned {cls!r}, which is not a class")
        name = getattr(cls, "__model__", cls.__name__)
        existing = self._by_name.get(name)
        if existing is not None:
            if existing.cls is cls:
                return existing
            raise ValueError(f"two models are named {name!r}: {existing.cls.__module__} and {cls.__module__}")
        template = Record(cls, "", 0, {})
        info = ModelInfo(cls, name, frozenset())
        info.initialize(template)
        declared = getattr(cls, "initialize", None) is not None
        fields = frozenset(template._data) if declared else None
        info = ModelInfo(cls, name, frozenset(info.index(template)), fields,
                         template.fields() if declared else None, _history_limit(cls, name),
                         _history_keep_removed(cls, name),
                         _record_class(cls, fields) if fields is not None else Record)
        self._by_cls[cls] = info
        self._by_name[name] = info
        return info

    def info(self, cls: type) -> ModelInfo:
        """Return the registration of a model class; raise LookupError if it has none."""
        try:
            return self._by_cls[cls]
        except (KeyError, TypeError):
            raise LookupError(f"{cls!r} is not a registered model (return it from bastion_models)") from None

    def named(self, name: str) -> ModelInfo:
        """Return the registration of a model by its name; raise LookupError if none has it."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LookupError(f"no registered model is named {name!r}") from None

    def __iter__(self):
        return iter(self._by_name.values())

    def __contains__(self, cls: object) -> bool:
        return cls in self._by_cls


def _history_limit(cls: type, name: str) -> int:
    """How many versions a model keeps: its ``history_limit`` if it says ``history = True``, else 0."""
    keeps = getattr(cls, "history", False)
    limit = getattr(cls, "history_limit", None)
    if not isinstance(keeps, bool):
        raise TypeError(f"model {name}: history is True or False, not {keeps!r}")
    if not keeps:
        if limit is not None:
            raise TypeError(f"model {name}: history_limit without history = True keeps nothing; say history = True")
        return 0
    if limit is None:
        return DEFAULT_HISTORY_LIMIT
    if type(limit) is not int or limit < 1:
        raise TypeError(f"model {name}: history_limit is a number of versions, at least 1, not {limit!r}")
    return limit


def _history_keep_removed(cls: type, name: str) -> int:
    """How many removals a removed record's history outlives: the model's ``history_keep_removed``, else the default.

    It is a number of records a domain may hold the history of after their
    removal, so 0 is allowed (a record's history goes with it). Only a model
    that keeps history may name it.
    """
    keep = getattr(cls, "history_keep_removed", None)
    if keep is None:
        return DEFAULT_HISTORY_KEEP_REMOVED
    if not getattr(cls, "history", False):
        raise TypeError(f"model {name}: history_keep_removed without history = True keeps nothing; say history = True")
    if type(keep) is not int or keep < 0:
        raise TypeError(f"model {name}: history_keep_removed is a number of removed records, 0 or more, not {keep!r}")
    return keep


Validator = Callable[[type, Record, Errors], None]


def _checked_where(info: ModelInfo, where: Mapping[str, Scalar] | None) -> dict[str, Scalar]:
    """``where`` as a new dict, its fields indexed ones and its values scalars (ValueError, TypeError)."""
    where = dict(where or {})
    unknown = set(where) - info.index_fields
    if unknown:
        raise ValueError(f"{info.name} has no index on {', '.join(sorted(unknown))}; "
                         f"indexed fields: {', '.join(sorted(info.index_fields)) or 'none'}")
    for field, value in where.items():
        check_scalar(value, f"where[{field!r}]")
    return where


def _names_a_record(id: Any) -> bool:
    """Whether ``id`` can name a record (TypeError if it is not a string): an id that breaks the record-id rule
    (:func:`kernel.core.driver.is_record_id`) names none, and no driver is asked about it."""
    if not isinstance(id, str):
        raise TypeError("a record id is a string")
    return is_record_id(id)


class UnitOfWork:
    """A set of reads and writes in one domain, committed atomically at exit.

    ``author`` is who commits (the caller's username; :func:`storage` takes
    it from the current request): the history of a model that keeps one
    records it beside each version.
    """

    def __init__(self, driver: Driver, domain: str, models: Models, validator: Validator | None = None,
                 author: str | None = None):
        self.driver = driver
        self.domain = domain
        self.models = models
        self.validator = validator
        self.author = author
        self._loaded: dict[tuple[str, str], Record] = {}
        self._read_vsn: dict[tuple[str, str], int] = {}
        self._inserted: set[tuple[str, str]] = set()
        self._updated: set[tuple[str, str]] = set()
        self._deleted: dict[tuple[str, str], int] = {}
        self._open = False

    # -- context manager --------------------------------------------------

    def __enter__(self) -> UnitOfWork:
        if self._open:
            raise RuntimeError("this unit of work is already open")
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._open = False
        if exc_type is None:
            self.commit()

    # -- reads ------------------------------------------------------------

    def select(self, model: type, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[Record]:
        """Return the model's records in creation order, filtered by equality on indexed fields.

        One page of them with ``after`` (a record id: only the records created
        after it, whether or not it matches ``where``; RecordNotFound when the
        domain has no such record) and ``limit`` (at most that many, an int of
        at least 1). A page costs what it holds on a driver that declares
        ``paged_select`` (every shipped one does).
        """
        info = self.models.info(model)
        return self._track(info, self._select(info, where, after, limit))

    def values(self, model: type, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return what :meth:`select` would, as plain dictionaries: ``{"id", "vsn", field: value, ...}`` each.

        The same records in the same order (the same page, for ``after`` and
        ``limit``), with the same fields (a field the record lacks gets its
        default; a field that is no longer the model's is left out), and a
        record this unit of work holds as it holds it. They are snapshots, not
        records: nothing tracks them, a change to one is never saved, and they
        cost no record object: the way to answer a list.
        """
        info = self.models.info(model)
        name, loaded, shaped, fields = info.name, self._loaded, info.shaped, info.fields
        out = []
        for stored in self._select(info, where, after, limit):
            record = loaded.get((name, stored.id)) if loaded else None
            if record is None:
                data = stored.data
                # A stored record has its model's fields as a rule: it is shaped only when it has not (as
                # ``shaped`` would find, without a call per record).
                out.append({"id": stored.id, "vsn": stored.vsn,
                            **(data if fields is None or fields == data.keys() else shaped(data))})
            else:
                out.append({"id": record._id, "vsn": record._vsn, **shaped(record.fields())})
        return out

    def _select(self, info: ModelInfo, where: Mapping[str, Scalar] | None, after: str | None,
                limit: int | None) -> list[StoredRecord]:
        """What the driver selects: every record, or the page ``after`` and ``limit`` name (checked here)."""
        where = _checked_where(info, where)
        if after is None and limit is None:
            return self.driver.select(self.domain, info.name, where)
        if after is not None and not _names_a_record(after):
            raise RecordNotFound(f"no {info.name} with id {after!r}")
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValueError(f"limit is a number of records, at least 1, not {limit!r}")
        # Every driver pages: one that cannot is wrapped once, when the runtime opens it (kernel/core/paging.py).
        return self.driver.select(self.domain, info.name, where, after=after, limit=limit)

    def fetch(self, model: type, id: str, vsn: int | None = None) -> Record:
        """Return one record; RecordNotFound if absent, VersionConflict if ``vsn`` is not its version."""
        record = self.get(model, id)
        if record is None:
            raise RecordNotFound(f"no {self.models.info(model).name} with id {id!r}")
        if vsn is not None and record._vsn != vsn:
            raise VersionConflict("record changed")
        return record

    def get(self, model: type, id: str) -> Record | None:
        """Return one record, or None if the domain has none with this id.

        A string that breaks the record-id rule (:func:`kernel.core.driver.is_record_id`:
        empty, too long, with NUL or a lone surrogate) names no record: None,
        without asking the driver.
        """
        info = self.models.info(model)
        if not _names_a_record(id):
            return None
        key = (info.name, id)
        if key in self._deleted:
            return None
        if key in self._loaded:
            return self._loaded[key]
        stored = self.driver.fetch(self.domain, info.name, id)
        return None if stored is None else self._track(info, [stored])[0]

    def history(self, model: type, id: str) -> list[dict[str, Any]]:
        """Return the committed versions of a record, oldest first: ``{"vsn", "at", "by", "data"}`` each.

        ``at`` is the commit's time (Unix seconds on the storage's clock),
        ``by`` the username that committed it (None outside a signed call),
        ``data`` the record's data as that version stored it, or None for its
        deletion. At most the model's ``history_limit`` versions are kept. A
        deleted record's history stays until ``history_keep_removed`` more
        records of the model have been removed in the domain; then it is
        ``[]``, as for an id never used (or, for an id inserted again since,
        only the versions after its deletion). Only committed versions are
        there: a change of this unit of work appears once it commits.
        ValueError for a model that keeps no history (``history = True``
        turns it on).
        """
        info = self.models.info(model)
        if not info.history:
            raise ValueError(f"{info.name} keeps no history: give the model history = True")
        if not _names_a_record(id):
            return []
        return [version.to_dict() for version in self.driver.history(self.domain, info.name, id)]

    # -- writes -----------------------------------------------------------

    def insert(self, model: type, id: str | None = None, **fields: Any) -> Record:
        """Create a record (id: a random UUID unless named), initialized then given ``fields``."""
        info = self.models.info(model)
        if id is None:
            id = new_record_id()
        else:
            check_record_id(id)
        key = (info.name, id)
        if key in self._loaded and key not in self._deleted:
            raise VersionConflict(f"{info.name} {id!r} already exists")
        record = info.record(id, 1, {})
        info.initialize(record)
        record.merge(**fields)
        self._deleted.pop(key, None)
        self._loaded[key] = record
        self._inserted.add(key)
        return record

    def update(self, record: Record | type, id: str | None = None, vsn: int | None = None, **fields: Any) -> Record:
        """Save a record at exit: ``update(record)`` or ``update(Model, id, vsn, **fields)``."""
        if not isinstance(record, Record):
            record = self.fetch(record, id, vsn)  # type: ignore[arg-type]
        record.merge(**fields)
        self._updated.add(self._key_of(record))
        return record

    def delete(self, record: Record | type, id: str | None = None, vsn: int | None = None) -> None:
        """Delete a record at exit: ``delete(record)`` or ``delete(Model, id, vsn)``."""
        if not isinstance(record, Record):
            record = self.fetch(record, id, vsn)  # type: ignore[arg-type]
        key = self._key_of(record)
        if key in self._inserted:
            self._inserted.discard(key)
            self._loaded.pop(key, None)
            return
        self._updated.discard(key)
        self._deleted[key] = self._read_vsn[key]
        self._loaded.pop(key, None)

    # -- commit -----------------------------------------------------------

    def changes(self) -> list[Change]:
        """Validate and return the pending changes; raise ValidationError on any error."""
        changes: list[Change] = []
        errors = Errors()
        for key, record in self._loaded.items():
            inserting = key in self._inserted
            if not (inserting or key in self._updated or record._dirty):
                continue
            info = self.models.info(record._model)
            record_errors = info.validate(record)
            if self.validator is not None:
                self.validator(record._model, record, record_errors)
            if record_errors:
                errors.merge(record_errors)
                continue
            data = info.stored(record.fields())
            check_json(data, f"{info.name} {record._id}")
            op: Literal["insert", "update"] = "insert" if inserting else "update"
            vsn = 0 if inserting else self._read_vsn[key]
            if info.history:
                changes.append(Change(op, info.name, record._id, vsn, data, info.index(record), info.history, self.author))
            else:
                changes.append(Change(op, info.name, record._id, vsn, data, info.index(record)))
        if errors:
            raise ValidationError(errors.to_dict())
        for (name, id), vsn in self._deleted.items():
            info = self.models.named(name)
            if info.history:
                changes.append(Change("delete", name, id, vsn, history=info.history, by=self.author,
                                      keep_removed=info.keep_removed))
            else:
                changes.append(Change("delete", name, id, vsn))
        return changes

    def commit(self) -> None:
        """Validate and commit every pending change atomically, then reset."""
        changes = self.changes()
        if changes:
            self.driver.commit(self.domain, changes)
        for change in changes:
            key = (change.model, change.id)
            record = self._loaded.get(key)
            if record is not None:
                object.__setattr__(record, "_vsn", change.new_vsn)
                object.__setattr__(record, "_dirty", False)
                self._read_vsn[key] = change.new_vsn
        self._inserted.clear()
        self._updated.clear()
        self._deleted.clear()

    # -- internals --------------------------------------------------------

    def _track(self, info: ModelInfo, stored: list[StoredRecord]) -> list[Record]:
        """The records of ``stored``: the one this unit of work already holds, else a new one it now holds.

        One loop for a select of thousands as for one fetch. Drivers hand over
        data the caller owns (the conformance suite checks it): no second copy.
        """
        cls, model, fields, name, complete = info.record_class, info.cls, info.fields, info.name, info.complete
        loaded, read_vsn, out = self._loaded, self._read_vsn, []
        for one in stored:
            key = (name, one.id)
            record = loaded.get(key)
            if record is None:
                record = loaded[key] = cls(model, one.id, one.vsn, complete(one.data), fields)
                read_vsn[key] = one.vsn
            out.append(record)
        return out

    def _key_of(self, record: Record) -> tuple[str, str]:
        key = (self.models.info(record._model).name, record._id)
        if self._loaded.get(key) is not record:
            raise ValueError(f"{record!r} does not belong to this unit of work")
        return key


@dataclass(frozen=True, slots=True)
class StorageScope:
    """What ``storage()`` opens a unit of work on: a driver, a domain, the models and the validator."""

    driver: Driver
    domain: str
    models: Models
    validator: Validator | None = None


def storage() -> UnitOfWork:
    """Open a unit of work on the records of the current request's domain, committed as its user."""
    scope = context.current_scope()
    if scope is None:
        raise LookupError("no Bastion request is active (use Runtime.bind() outside HTTP)")
    request = context.get()
    return UnitOfWork(scope.driver, scope.domain, scope.models, scope.validator,
                      request.user if request is not None else None)


#: The types of the JSON values a copy can share: immutable (``copy.deepcopy`` gives the value itself back).
_SHARED = frozenset({str, int, float, bool, type(None)})


def copied_value(value: Any) -> Any:
    """A deep copy of a value of record data: a scalar as it is, anything else through ``copy.deepcopy``."""
    return value if type(value) in _SHARED else copy.deepcopy(value)


def copied(data: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of record data (what ``copy.deepcopy`` gives, without a call per scalar field)."""
    return {name: value if type(value) in _SHARED else copy.deepcopy(value) for name, value in data.items()}


def new_record_id() -> str:
    """A random record id, as ``str(uuid.uuid4())`` writes one (version 4, RFC 4122 variant), without the UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
