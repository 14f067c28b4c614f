"""The todo application: a Todo model that keeps its history, seven services and a TodoMVC web UI.

Written the way the Fanery tutorial writes it: a model of four classmethods,
and services that each open one unit of work with ``with storage() as db:``.
The wire contract of the services is docs/protocol.md section 10.
"""

from __future__ import annotations

from pathlib import Path

from bastion_todo.model import Todo
from bastion_todo.permitted import NAME, Permitted
from bastion_todo.services import CLEAR_CHUNK, PAGE_LIMIT, add, clear_completed, get_all, history, remove, update
from kernel import Runtime, hookimpl

#: The web UI, served at ``/`` on every allowed host.
STATIC_DIR = Path(__file__).parent / "static"


#: The services of docs/protocol.md section 10 that ``permitted`` tells the caller about.
SERVICES = [get_all, add, update, remove, clear_completed, history]


@hookimpl
def bastion_configure(runtime: Runtime) -> None:
    """Register this runtime's ``permitted`` service (it asks the runtime's authorization)."""
    runtime.register(Permitted(runtime, [fn.__name__ for fn in SERVICES]), name=NAME)


@hookimpl
def bastion_models():
    """Register the Todo model."""
    return [Todo]


@hookimpl
def bastion_services():
    """Register the todo services (``permitted`` is registered bound, by this runtime's :class:`Permitted`)."""
    return list(SERVICES)


@hookimpl
def bastion_static():
    """Serve the web UI at ``/``."""
    return [("/", str(STATIC_DIR))]


__all__ = ["Todo", "PAGE_LIMIT", "CLEAR_CHUNK", "get_all", "add", "update", "remove", "clear_completed", "history", "STATIC_DIR"]
