"""Backend errors translated into the kernel's: outages become ServiceUnavailable.

Messages never carry the driver's own text, a file path or a password: the
original error is logged for the operator instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from kernel import ServiceUnavailable, VersionConflict

log = logging.getLogger("bastion.storage_sql")

#: The one message of every outage.
UNAVAILABLE = "the SQL database does not answer"


def _sqlstate(error: BaseException) -> str:
    # A SQLAlchemy error wraps the DBAPI's (``orig``); the driver's calls raise the DBAPI's own.
    return getattr(error, "sqlstate", None) or getattr(getattr(error, "orig", None), "sqlstate", None) or ""


def is_outage(error: BaseException) -> bool:
    """Say whether ``error`` means the database cannot be used right now."""
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


#: SQLSTATE of a write refused by a read-only PostgreSQL (a hot standby, default_transaction_read_only):
#: the database cannot take writes now, an outage rather than a bug.
READ_ONLY = "25006"


def is_read_only(error: BaseException) -> bool:
    """Say whether PostgreSQL refused a write because it is read-only."""
    return _sqlstate(error) == READ_ONLY


def is_transaction_conflict(error: BaseException) -> bool:
    """Say whether PostgreSQL rolled the transaction back for a deadlock or serialisation failure."""
    return _sqlstate(error).startswith("40")


def unavailable(error: BaseException, backend: str = "sql") -> ServiceUnavailable:
    """Log ``error`` and return the ServiceUnavailable to raise in its place (``backend``: the dialect's name)."""
    detail = getattr(error, "orig", None) or error
    log.warning("SQL storage unavailable: %s: %s", type(detail).__name__, " ".join(str(detail).split())[:300])
    return ServiceUnavailable(UNAVAILABLE, backend=backend)


@contextmanager
def translated(conflicts: bool = False) -> Iterator[None]:
    """Turn outages into ServiceUnavailable (and, with ``conflicts``, rolled-back transactions into VersionConflict)."""
    try:
        yield
    except sa_exc.SQLAlchemyError as error:
        if conflicts and is_transaction_conflict(error):
            raise VersionConflict("record changed") from None
        if is_outage(error):
            raise unavailable(error) from None
        raise
