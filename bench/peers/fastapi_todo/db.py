"""The engine and the per-request session (``get_db``)."""

from collections.abc import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from bench.peers.fastapi_todo import config


def make_engine(path: str):
    """An engine on the SQLite file ``path``: WAL, ``synchronous=NORMAL`` and a 30 s busy timeout on every
    connection, as Bastion's SQLite driver and the Django peer have. ``check_same_thread`` is off, as FastAPI's
    tutorial has it: a request's session may be used from more than one of the threadpool's threads."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


engine = make_engine(config.DB_PATH)


def get_db() -> Iterator[Session]:
    """One session per request, closed when the answer is sent."""
    with Session(engine) as session:
        yield session
