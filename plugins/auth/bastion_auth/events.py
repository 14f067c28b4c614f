"""Security events of the account services, each reported by one well-named function.

Every account change the plugin makes on a user's behalf goes through here,
so that whatever records security events has exactly one place to hook: each
is one ``bastion.security`` line and one count in
``bastion_security_events_total`` (``runtime.security_event``,
docs/operations.md). The functions take what may be known about the event
and never a secret: no password, key or whole session id.
"""

from __future__ import annotations

from kernel import Runtime


def password_changed(runtime: Runtime, domain: str, username: str, origin: str, sessions_ended: int) -> None:
    """A user changed their own password (``change_password``); ``sessions_ended`` of their other sessions ended."""
    runtime.security_event("password_changed", user=username, domain=domain, origin=origin,
                           sessions_ended=sessions_ended, by="change_password")


def sessions_ended(runtime: Runtime, domain: str, username: str, origin: str, count: int) -> None:
    """A user ended their other sessions (``end_sessions``): ``count`` of them were live."""
    runtime.security_event("sessions_ended", user=username, domain=domain, origin=origin, sessions_ended=count,
                           by="end_sessions")


def roles_assigned(runtime: Runtime, domain: str, username: str, roles: list[str], by: str, **fields) -> None:
    """A user's roles were set (``by``: ``"[roles]"`` at start-up, ``"bastion roles"``)."""
    runtime.security_event("roles_assigned", user=username, domain=domain, roles=",".join(roles) or "(none)",
                           by=by, **fields)
