"""The account services (docs/protocol.md section 5): signed calls of a user on their own account.

``change_password``, ``sessions`` and ``end_sessions`` are ``@service`` methods of :class:`AccountServices`,
one per runtime, which the plugin's ``bastion_services`` registers bound (``Auth.bastion_services``): each finds
the runtime's stores through ``self``, as every other hook of the plugin does, and the caller through
``kernel.current()``. (The kernel hands a service no runtime, and a request carries none, so a module-level
function would have to find the plugin's state through something global.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion_auth import events, users
from bastion_auth.sessions import Session
from kernel import Forbidden, Request, ValidationError, VersionConflict, current, service

if TYPE_CHECKING:
    from bastion_auth.core import Auth


class AccountServices:
    """The account services of one runtime's auth plugin."""

    def __init__(self, auth: Auth):
        self.auth = auth

    def all(self) -> list:
        """The services, bound to this runtime's plugin, as ``bastion_services`` returns them."""
        return [self.change_password, self.sessions, self.end_sessions]

    @service
    def change_password(self, old: str, new: str) -> bool:
        """Change the caller's password; every other session of the user ends, the calling one stays.

        The new password must follow the policy (422 ValidationError naming
        the rule, checked first: a mistyped new password costs no attempt);
        ``old`` is then checked exactly like a login's password (see
        :meth:`~bastion_auth.login.Login.check_password`: 429 Abusive or
        AccountLocked, 401 InvalidCredential). The hash is replaced only if it
        is still the one that verified (409 VersionConflict when a concurrent
        change won), and the other sessions end after it, so that a login
        racing the change with the old password sees the new hash or has its
        session ended.
        """
        auth = self.auth
        request = current()
        session = caller(request)
        domain, username, origin = request.domain, session.username, request.origin
        broken = auth.tenant(domain).passwords.broken_rule(new)
        if broken is not None:
            rule, bound = broken
            words = "at least" if rule == "min_length" else "at most"
            raise ValidationError({"new": {rule: bound}}, f"a password has {words} {bound} characters")
        record, _ = auth.login.check_password(domain, origin, username, old, "the current password is wrong",
                                              "change_password")
        if not users.set_password(username, auth.passwords.context.hash(new), expected_hash=record.password):
            raise VersionConflict("the password was changed meanwhile; try again")
        ended = auth.sessions.end_others(domain, username, session.sid, auth.clock())
        events.password_changed(auth.runtime, domain, username, origin, ended)
        return True

    @service
    def sessions(self) -> list[dict[str, Any]]:
        """The caller's live sessions, oldest first, without keys or whole sids: ``{"id", "created",
        "last_seen", "origin", "current"}`` each."""
        request = current()
        session = caller(request)
        return [live.describe(session.sid)
                for live in self.auth.sessions.live(request.domain, session.username, self.auth.clock())]

    @service
    def end_sessions(self) -> int:
        """End the caller's other sessions; return how many were live."""
        request = current()
        session = caller(request)
        ended = self.auth.sessions.end_others(request.domain, session.username, session.sid, self.auth.clock())
        events.sessions_ended(self.auth.runtime, request.domain, session.username, request.origin, ended)
        return ended


def caller(request: Request) -> Session:
    """The session of the call: one of this plugin's, in the call's domain (else 403)."""
    session = request.session
    if not isinstance(session, Session) or session.domain != request.domain:
        raise Forbidden("the account services need a session of the auth plugin")
    return session
