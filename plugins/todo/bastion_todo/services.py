"""The todo services (docs/protocol.md section 10), each one unit of work.

Errors come in the protocol's order by construction: the kernel checks the
annotated ``id: str`` and ``vsn: int`` while binding (400 InvalidCall);
``db.fetch(Todo, id, vsn)`` raises RecordNotFound (404) before VersionConflict
(409); the model's ``validate`` runs only when the unit of work commits (422).
``text`` and ``done`` are deliberately unannotated so that a wrong type is a
422 with ``fields``, not a 400.
"""

from __future__ import annotations

from typing import Any

from bastion_todo.model import Todo
from kernel import InvalidCall, RecordNotFound, is_record_id, service, storage


class _Omitted:
    """The default of an optional field: distinct from JSON ``null``, which is a value (and invalid)."""

    def __repr__(self) -> str:
        return "<omitted>"


OMITTED: Any = _Omitted()


#: The most todos one page of get_all holds (its ``limit``).
PAGE_LIMIT = 1000


@service
def get_all(after: str | None = None, limit: int | None = None) -> list[dict]:
    """Return the domain's todos, oldest first: every one, or a page of at most ``limit`` after the todo ``after``.

    Without arguments, every todo (the protocol's version 1 contract). With
    ``limit`` (1 to ``PAGE_LIMIT``), a page: a call costs one page, whatever
    the domain holds. The next page starts after the last todo of this one;
    a page shorter than ``limit`` is the last. ``after`` names a todo the
    domain holds (RecordNotFound otherwise: it was removed since, so the list
    is read again from the start). ``db.values`` gives each todo as
    ``{"id", "vsn", "text", "done"}``, which is ``Todo.to_dict`` of its
    record, without making the record objects.
    """
    if limit is not None and not 1 <= limit <= PAGE_LIMIT:
        raise InvalidCall(f"get_all: limit is a number of todos from 1 to {PAGE_LIMIT}, not {limit}")
    with storage() as db:
        return db.values(Todo, after=after, limit=limit)


@service
def add(text) -> dict:
    """Add a todo with ``text``; return it (``vsn`` 1, ``done`` false)."""
    with storage() as db:
        record = db.insert(Todo, text=text)
    return Todo.to_dict(record)


@service
def update(id: str, vsn: int, text=OMITTED, done=OMITTED) -> dict:
    """Change a todo's text and/or done; return it with ``vsn`` one higher.

    Naming neither field changes nothing and returns the todo as stored.
    """
    fields = {name: value for name, value in (("text", text), ("done", done)) if value is not OMITTED}
    with storage() as db:
        record = db.fetch(Todo, id, vsn)
        if fields:
            db.update(record, **fields)
    return Todo.to_dict(record)


@service
def remove(id: str, vsn: int) -> bool:
    """Remove a todo; return true."""
    with storage() as db:
        db.delete(Todo, id, vsn)
    return True


@service
def clear_completed() -> int:
    """Remove every done todo at once (all or none); return how many."""
    with storage() as db:
        completed = db.select(Todo, {"done": True})
        for record in completed:
            db.delete(record)
    return len(completed)


@service
def history(id: str) -> list[dict]:
    """Return the kept versions of a todo, oldest first: ``{"vsn", "at", "by", "data"}`` each.

    ``data`` is ``{"done", "text"}`` as that version stored it, or null for
    its removal (a removed todo's history stays). RecordNotFound when the
    domain has no version of such a todo.
    """
    with storage() as db:
        versions = db.history(Todo, id) if is_record_id(id) else []
    if not versions:
        raise RecordNotFound(f"no Todo with id {id!r}")
    return versions
