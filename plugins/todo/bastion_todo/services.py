"""The todo services (docs/protocol.md section 10), each one unit of work (clear_completed one per chunk).

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

#: The most todos one unit of work of clear_completed removes: what bounds the time it holds the storage's
#: write turn (on SQLite, every tenant's) to that of 500 removals, however many todos are done.
CLEAR_CHUNK = 500


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
    """Remove every done todo, :data:`CLEAR_CHUNK` at most per unit of work; return how many this call removed.

    One unit of work is one write transaction, and on SQLite every tenant's
    writes take turns at one lock: removing 40,000 todos in one held it for
    1.5 s, and every other tenant's calls waited. So the done todos are
    removed a chunk at a time, oldest first, each chunk a unit of work of its
    own, committed (atomically) before the next begins, and other writes
    take their turns in between; the call still answers what version 1 says,
    how many it removed, once all are. Up to one chunk, this is the version
    1 call exactly: one read, one atomic commit.

    The list of done todos is read once; each later chunk reads its own
    todos again, one by one, and removes those still done (a todo removed or
    marked not done since stays out of it, and out of the count). Reading
    the list again for each chunk would cost what is left per chunk (a page
    filtered on ``done`` costs every done todo on the shipped drivers),
    quadratic in their number.

    A chunk that fails (a VersionConflict: one of its todos changed between
    its read and its commit; a ServiceUnavailable) removes nothing and ends
    the call with its error: the chunks before it stay removed, and calling
    again removes the rest.
    """
    with storage() as db:
        completed = db.select(Todo, {"done": True})
        for record in completed[:CLEAR_CHUNK]:
            db.delete(record)
    removed = min(len(completed), CLEAR_CHUNK)
    for start in range(CLEAR_CHUNK, len(completed), CLEAR_CHUNK):
        with storage() as db:
            fetched = [db.get(Todo, record._id) for record in completed[start:start + CLEAR_CHUNK]]
            chunk = [record for record in fetched if record is not None and record.done]
            for record in chunk:
                db.delete(record)
        removed += len(chunk)
    return removed


@service
def history(id: str) -> list[dict]:
    """Return the kept versions of a todo, oldest first: ``{"vsn", "at", "by", "data"}`` each.

    ``data`` is ``{"done", "text"}`` as that version stored it, or null for
    its removal. A removed todo's history stays until ``Todo.history_keep_removed``
    more todos of its domain were removed after it (docs/storage.md, "History").
    RecordNotFound when the domain has no version of such a todo.
    """
    with storage() as db:
        versions = db.history(Todo, id) if is_record_id(id) else []
    if not versions:
        raise RecordNotFound(f"no Todo with id {id!r}")
    return versions
