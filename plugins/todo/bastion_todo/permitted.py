"""``permitted()``: which todo services the caller may call, so that the web UI offers only those.

Whether a service may be called is the step 12 check of docs/protocol.md
section 4, the ``bastion_has_permission`` hook (the ``permissions`` plugin's
``[permissions]``, or any other authorization). Asking it needs the runtime,
which the kernel hands no service: so ``permitted`` is a ``@service`` method
of :class:`Permitted`, one per runtime, registered in ``bastion_configure``
and returned bound by its ``bastion_services`` (as the auth plugin's account
services are).
"""

from __future__ import annotations

from kernel import Request, Runtime, current, hookimpl, service

#: The name this runtime's :class:`Permitted` is registered under.
NAME = "bastion_todo.runtime"


class Permitted:
    """The ``permitted`` service of one runtime."""

    def __init__(self, runtime: Runtime, services: list[str]):
        self.runtime = runtime
        self.services = services

    @hookimpl
    def bastion_services(self) -> list:
        """Register ``permitted``, bound to this runtime."""
        return [self.permitted]

    @service
    def permitted(self) -> list[str]:
        """The names of the todo services the caller may call, in the order of docs/protocol.md section 10.

        Each is asked of ``bastion_has_permission`` exactly as step 12 asks
        it of a call: any False denies. It reveals nothing but the caller's
        own rights, which a call of each service would reveal too.
        """
        request = current()
        return [name for name in self.services if self.allows(name, request)]

    def allows(self, name: str, request: Request) -> bool:
        """Whether the caller of ``request`` may call the service ``name``."""
        verdicts = self.runtime.hook.bastion_has_permission(session=request.session, service=name, request=request)
        return not any(allowed is False for allowed in verdicts)
