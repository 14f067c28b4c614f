"""Security events of the account services, each reported by one well-named function.

Every account change the plugin makes on a user's behalf goes through here,
so that whatever records security events (a log, metrics, an audit trail)
has exactly one place to hook. The functions take what may be known about
the event and never a secret: no password, key or whole session id.
"""

from __future__ import annotations

import logging

log = logging.getLogger("bastion.auth")


def password_changed(domain: str, username: str, origin: str, sessions_ended: int) -> None:
    """A user changed their own password (``change_password``); ``sessions_ended`` of their other sessions ended."""
    log.info("password changed: %s@%s from %s; %d other session(s) ended", username, domain, origin, sessions_ended)


def sessions_ended(domain: str, username: str, origin: str, count: int) -> None:
    """A user ended their other sessions (``end_sessions``): ``count`` of them were live."""
    log.info("other sessions ended: %s@%s from %s: %d", username, domain, origin, count)


def roles_assigned(domain: str, username: str, roles: list[str], by: str) -> None:
    """A user's roles were set (``by``: ``"[roles]"`` at start-up, ``"bastion roles"``)."""
    log.info("roles of %s@%s set by %s: %s", username, domain, by, ", ".join(roles) or "none")
