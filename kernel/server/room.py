"""What the worker's rooms are mixed into, for the type checker: gunicorn's ``ThreadWorker`` and one another.

Each room of :class:`kernel.server.worker.BastionWorker` (:class:`~kernel.server.gathering.Gathering`,
:class:`~kernel.server.limit.ConnectionLimit`, :class:`~kernel.server.handling.Handling`,
:class:`~kernel.server.refusals.JsonRefusals`) is a mixin whose ``self`` is the worker: it reads gunicorn's
state (``cfg``, ``log``, ``poller``, ``nr_conns``, ...), calls ``super()`` into ``ThreadWorker`` and uses the
queues of the other rooms. For the type checker a room subclasses :class:`Room`, which is that worker:
``ThreadWorker`` (gunicorn ships no types, so what it has is ``Any``) with the state whose types the rooms
rely on. At run time :class:`Room` is ``object``: the rooms' classes and the worker's method resolution order
are the same as without it. tests/test_gunicorn_internals.py checks that gunicorn's side exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import deque

    from gunicorn.workers.gthread import ThreadWorker

    from kernel.server.connection import BastionConn

    class Room(ThreadWorker):
        # gunicorn's ThreadWorker
        alive: bool
        nr: int
        max_requests: int
        nr_conns: int
        worker_connections: int
        max_keepalived: int
        # the rooms' (kernel.server.gathering), read and closed by the connection limit
        gathering_conns: deque[BastionConn]
        body_conns: deque[BastionConn]
        lingering_conns: deque[BastionConn]
        # the deadlines and max_body the worker takes from the master's settings (kernel.server.worker)
        header_timeout: float
        body_timeout: float
        max_body: int
else:
    Room = object

__all__ = ["Room"]
