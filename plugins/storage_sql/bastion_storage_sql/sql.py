"""Statements compiled once, and the three ways a call reads what one returns.

The record and state stores build their statements with SQLAlchemy Core when
the driver opens and keep each as an :class:`Sql`: the text and parameter
order of one dialect. A call then hands the text and its parameters straight
to the DBAPI connection the executor lends it, with no statement built,
compiled or cache-keyed per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

import sqlalchemy as sa


class Sql:
    """A statement compiled once for one dialect: its text and the order of its parameters."""

    __slots__ = ("text", "constants", "_pick")

    def __init__(self, statement: Any, dialect: sa.engine.Dialect):
        compiled = statement.compile(dialect=dialect)
        self.text: str = compiled.string
        # Parameters the statement carries its own value for (a LIMIT, a literal).
        self.constants = {compiled.bind_names[bind]: bind.value for bind in compiled.binds.values()
                          if bind.value is not None or not bind.required}
        # qmark (sqlite3) takes a tuple in order; pyformat (psycopg) takes the dict.
        self._pick = _picker(tuple(compiled.positiontup)) if compiled.positional else None

    def params(self, values: Mapping[str, Any]) -> Any:
        """The DBAPI parameters of ``values``."""
        if self.constants:
            values = {**self.constants, **values}
        pick = self._pick
        return values if pick is None else pick(values)

    def __repr__(self) -> str:
        return f"Sql({self.text!r})"


def _picker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple]:
    """What takes a statement's positional parameters out of a mapping, in order, as a tuple (one C call)."""
    if len(names) > 1:
        return itemgetter(*names)
    return lambda values: tuple(values[name] for name in names)  # itemgetter of one name returns the value alone


def first_row(connection: Any, sql: Sql, values: Mapping[str, Any]) -> Any:
    """Execute ``sql`` and return its first row, or None (the rows read to the end: the statement is over)."""
    rows = connection.execute(sql.text, sql.params(values)).fetchall()
    return rows[0] if rows else None


def all_rows(connection: Any, sql: Sql, values: Mapping[str, Any]) -> list:
    """Execute ``sql`` and return all its rows."""
    return connection.execute(sql.text, sql.params(values)).fetchall()


def row_count(connection: Any, sql: Sql, values: Mapping[str, Any]) -> int:
    """Execute ``sql`` and return how many rows it changed."""
    return connection.execute(sql.text, sql.params(values)).rowcount
