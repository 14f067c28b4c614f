"""The Todo model: ``{"id", "vsn", "text", "done"}`` (docs/protocol.md section 10)."""

from __future__ import annotations

from typing import Any

from kernel import Errors, Record, json_type

#: The longest text a todo may hold, in Unicode code points.
MAX_TEXT = 1000


class Todo:
    """One thing to do, private to its domain, with its last versions kept (who changed it, and how)."""

    #: Keep every committed version of each todo (``history(id)``), at most this many, oldest dropped.
    history = True
    history_limit = 100
    #: A removed todo's history stays until this many more todos of its domain were removed after it.
    history_keep_removed = 100

    @classmethod
    def initialize(cls, record: Record) -> Record:
        """A new todo is not done and says nothing yet."""
        return record.merge(done=False, text="")

    @classmethod
    def validate(cls, record: Record) -> Errors:
        """Check text (a non-blank string of at most 1,000 code points) and done (a boolean)."""
        errors = Errors()
        text = record.get("text")
        if not isinstance(text, str):
            errors.text.bad_type = json_type(text)
        elif not text.strip():
            # str.strip() removes exactly what str.isspace() calls whitespace,
            # which is Unicode's White_Space (plus the ASCII separators).
            errors.text.invalid = text
        elif len(text) > MAX_TEXT:
            errors.text.too_long = len(text)
        done = record.get("done")
        if not isinstance(done, bool):
            errors.done.bad_type = json_type(done)
        return errors

    @classmethod
    def index(cls, record: Record) -> dict[str, Any]:
        """Index on done, so that clear_completed selects only finished todos."""
        return {"done": record.done}

    @classmethod
    def to_dict(cls, record: Record) -> dict[str, Any]:
        """The todo's JSON form."""
        return {"id": record._id, "vsn": record._vsn, "text": record.text, "done": record.done}
