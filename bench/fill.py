"""Fast data fill straight through a storage driver (no HTTP), with predictable ids.

Todos are stored exactly as ``bastion_todo`` stores them (model ``Todo``,
data ``{"done", "text"}``, index ``{"done"}``). Ids are ``<prefix><n>``, so the
bench knows which todo each ``update`` request names, and that its vsn is 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from kernel.core.driver import Change

BATCH = 1000


def todo_id(prefix: str, i: int) -> str:
    """The id of the i-th filled todo."""
    return f"{prefix}{i:07d}"


def fill(driver, domain: str, count: int, prefix: str = "t") -> None:
    """Insert ``count`` todos into ``domain``: bulk SQL for the SQL driver, else batched commits."""
    if _sql_fill(driver, domain, count, prefix):
        return
    for start in range(0, count, BATCH):
        changes = [Change("insert", "Todo", todo_id(prefix, i), 0, {"done": False, "text": f"todo {i}"},
                          {"done": False})
                   for i in range(start, min(count, start + BATCH))]
        driver.commit(domain, changes)


def fill_plan(driver, plan: Iterable[tuple[str, int, str]]) -> None:
    """Run a plan of ``(domain, count, prefix)``."""
    for domain, count, prefix in plan:
        fill(driver, domain, count, prefix)


PLAN_ENV = "BENCH_FILL_PLAN"


def plan_from_env() -> list[tuple[str, int, str]]:
    """The plan a server process was given (mem:// is filled inside the server)."""
    path = os.environ.get(PLAN_ENV)
    if not path:
        return []
    with open(path, encoding="utf-8") as f:
        return [tuple(item) for item in json.load(f)]


def _sql_fill(driver, domain: str, count: int, prefix: str) -> bool:
    """Bulk-insert the rows ``SqlRecords.commit`` would write (record + one ``done`` index entry each).

    COPY (PostgreSQL) or executemany (SQLite) instead of two statements per todo; the
    domain is new, so SQLite's per-domain ``seq`` simply counts from 1 (on
    PostgreSQL the identity column numbers the rows in COPY order).
    """
    engine, dialect = getattr(driver, "engine", None), getattr(driver, "dialect", None)
    if engine is None or dialect not in ("sqlite", "postgresql"):
        return False
    try:
        from bastion_storage_sql.records import stored_token
        from bastion_storage_sql.schema import index_entries, records
    except ImportError:
        return False
    from kernel import dumps_text as dumps

    token = stored_token(False)
    ids = [(i, todo_id(prefix, i)) for i in range(count)]
    rows = [{"domain": domain, "model": "Todo", "id": id, "vsn": 1, "data": dumps({"done": False, "text": f"todo {i}"}),
             **({"seq": i + 1} if dialect == "sqlite" else {})} for i, id in ids]
    entries = [{"domain": domain, "model": "Todo", "field": "done", "token": token, "id": id} for _, id in ids]
    with engine.begin() as connection:
        if dialect == "postgresql":
            # COPY (the identity column numbers the rows in COPY order). ANALYZE in between: on a fresh
            # table the planner would check each index entry's foreign key with a sequential scan.
            raw = connection.connection.driver_connection
            with raw.cursor() as cursor:
                with cursor.copy("COPY bastion_records (domain, model, id, vsn, data) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row((row["domain"], row["model"], row["id"], row["vsn"], row["data"]))
                cursor.execute("ANALYZE bastion_records")
                with cursor.copy("COPY bastion_index (domain, model, field, token, id) FROM STDIN") as copy:
                    for e in entries:
                        copy.write_row((e["domain"], e["model"], e["field"], e["token"], e["id"]))
                cursor.execute("ANALYZE bastion_index")
        else:
            for start in range(0, count, 5000):
                connection.execute(records.insert(), rows[start:start + 5000])
                connection.execute(index_entries.insert(), entries[start:start + 5000])
    return True
