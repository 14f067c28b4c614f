"""Services: functions callable as ``POST /api/<name>``.

::

    @service
    def add(text): ...

    @service("todo.add")          # an explicit name
    def add_todo(text): ...

Arguments arrive as ``{"args": [...], "kwargs": {...}}`` and bind to the
function's signature; an argument that does not bind, or whose JSON type does
not match a simple annotation (``str``, ``int``, ``float``, ``bool``, ``list``,
``dict``, or one of these ``| None``), is 400 InvalidCall naming it. A JSON
boolean is never an ``int``. Other annotations are not checked: the service
validates those values itself.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from kernel.core.errors import InvalidCall

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_ATTR = "__bastion_service__"
_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), int: (int,), float: (int, float), bool: (bool,), list: (list,), dict: (dict,),
}


def service(fn: Callable | str | None = None, *, name: str | None = None):
    """Mark a function as a service, under its own name or an explicit one."""
    if isinstance(fn, str):
        return service(name=fn)
    if fn is None:
        return lambda f: service(f, name=name)
    service_name = name or fn.__name__
    if not _NAME.match(service_name):
        raise ValueError(f"invalid service name {service_name!r}")
    setattr(fn, _ATTR, service_name)
    return fn


class Service:
    """A registered service: its name, function and binding rules."""

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.fn = fn
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable annotations are simply not checked
            hints = {}
        self.checks = {p: _json_check(hints[p]) for p in self.signature.parameters if p in hints}
        self.checks = {p: c for p, c in self.checks.items() if c is not None}
        params = self.signature.parameters.values()
        self.open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
        self.keywords = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        #: Whether a call without arguments binds (no parameter needs a value): it then skips the binding.
        self.takes_nothing = all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                                 for p in params)
        #: The names of the parameters, in order, when every one is a plain one (positional or keyword, no
        #: ``*args``, ``**kwargs`` or keyword-only): a call then binds by their positions (see :meth:`arguments`).
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._plain: tuple[str, ...] | None = tuple(self.signature.parameters) if plain else None
        #: Of those, the ones without a default.
        self._required = frozenset(p.name for p in params if p.default is p.empty)

    def bind(self, args: list, kwargs: dict) -> inspect.BoundArguments:
        """Bind JSON arguments to the signature; raise InvalidCall naming what does not bind."""
        if not self.open_kwargs:
            unknown = sorted(set(kwargs) - self.keywords)
            if unknown:
                raise InvalidCall(f"{self.name}: unexpected argument {unknown[0]!r}")
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidCall(f"{self.name}: {exc}") from None
        for param, value in bound.arguments.items():
            self._check(param, value)
        return bound

    def _check(self, param: str, value: Any) -> None:
        """InvalidCall unless ``value`` has the JSON type the parameter's annotation asks for (if it asks)."""
        check = self.checks.get(param)
        if check is not None and not check(value):
            raise InvalidCall(f"{self.name}: argument {param!r} has the wrong type ({json_type(value)})")

    def arguments(self, args: list, kwargs: dict) -> tuple[tuple, dict]:
        """The positional and keyword arguments of a call, bound and checked (InvalidCall otherwise)."""
        if not args and not kwargs and self.takes_nothing:
            return (), {}  # what binding nothing gives: every parameter keeps its default
        names = self._plain
        if names is not None and len(args) <= len(names):
            # Plain parameters: the first len(args) are given by position, the others by keyword or their default.
            # When that binds, it is what inspect's binding finds, with the same checks, in a loop over the
            # arguments; anything else (too many, a name twice, one missing or unknown) is left to it, for its error.
            given = names[:len(args)]
            if all(name not in given and name in names for name in kwargs) and \
                    all(name in kwargs for name in self._required.difference(given)):
                for index, name in enumerate(names):  # in the signature's order, as inspect's binding has them
                    if index < len(args):
                        self._check(name, args[index])
                    elif name in kwargs:
                        self._check(name, kwargs[name])
                return tuple(args), kwargs
        bound = self.bind(args, kwargs)
        return bound.args, bound.kwargs

    def __call__(self, args: list, kwargs: dict) -> Any:
        positional, keywords = self.arguments(args, kwargs)
        return self.fn(*positional, **keywords)


class Services:
    """The registry of services by name."""

    def __init__(self, functions: Iterable[Callable] = ()):
        self._by_name: dict[str, Service] = {}
        for fn in functions:
            self.register(fn)

    def register(self, fn: Callable) -> Service:
        """Register a function decorated with :func:`service`."""
        name = getattr(fn, _ATTR, None)
        if name is None:
            raise TypeError(f"{fn!r} is not decorated with @service")
        existing = self._by_name.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"two services are named {name!r}")
        self._by_name[name] = Service(name, fn)
        return self._by_name[name]

    def get(self, name: str) -> Service | None:
        """Return the service, or None."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        """Return every service name, sorted."""
        return sorted(self._by_name)


def _json_check(hint: Any) -> Callable[[Any], bool] | None:
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        if len(members) != 1:
            return None
        hint = members[0]
    base = typing.get_origin(hint) or hint
    allowed = _JSON_TYPES.get(base)
    if allowed is None:
        return None

    def check(value: Any) -> bool:
        if value is None:
            return optional
        if isinstance(value, bool) and base is not bool:
            return False
        return isinstance(value, allowed)

    return check


def json_type(value: Any) -> str:
    """Name the JSON type of a value, as error messages spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
