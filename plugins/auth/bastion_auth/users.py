"""Users: one record per (domain, username), stored through the kernel's storage API, roles included."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kernel import Errors, InvalidHost, VersionConflict, current, parse_domain, storage

if TYPE_CHECKING:
    from bastion_auth.roles import RolesEpoch

#: The longest username, in characters.
MAX_USERNAME = 150
USERNAME = re.compile(rf"[A-Za-z0-9_.@+-]{{1,{MAX_USERNAME}}}")
#: A role's name: 1 to 64 letters, digits or ``_.-`` (the permissions plugin accepts the same).
ROLE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The most roles one user holds.
MAX_ROLES = 64


def is_username(value: Any) -> bool:
    """Whether a value can be a username: 1 to 150 letters, digits or ``_.@+-``."""
    return isinstance(value, str) and USERNAME.fullmatch(value) is not None


def is_role(value: Any) -> bool:
    """Whether a value can be a role's name: 1 to 64 letters, digits or ``_.-``."""
    return isinstance(value, str) and ROLE.fullmatch(value) is not None


class User:
    """A user of one domain; the record id is the username (a natural key).

    ``roles`` (added after the first release: older records read it as ``[]``)
    is a sorted list of role names.
    """

    __model__ = "User"

    @classmethod
    def initialize(cls, record):
        record.merge(username="", password="", created=0, roles=[])

    @classmethod
    def validate(cls, record):
        errors = Errors()
        if not is_username(record.username):
            errors.username.invalid = "1 to 150 letters, digits or _.@+-"
        if not isinstance(record.password, str) or not record.password.startswith("$"):
            errors.password.invalid = "not a password hash"
        roles = record.roles
        if not isinstance(roles, list) or len(roles) > MAX_ROLES or not all(is_role(role) for role in roles):
            errors.roles.invalid = f"at most {MAX_ROLES} names of 1 to 64 letters, digits or _.-"
        return errors

    @classmethod
    def index(cls, record):
        return {}

    @classmethod
    def to_dict(cls, record) -> dict[str, Any]:
        return {"username": record.username, "created": record.created, "roles": list(record.roles)}


def parse_roles(text: str) -> list[str]:
    """``"editor, admin"`` -> ``["admin", "editor"]`` (sorted, each once); ValueError naming a bad one. Empty: none."""
    roles = sorted({part.strip() for part in re.split(r"[,\n]", text) if part.strip()})
    for role in roles:
        if not is_role(role):
            raise ValueError(f"{role!r} is not a role name: 1 to 64 letters, digits or _.-")
    if len(roles) > MAX_ROLES:
        raise ValueError(f"at most {MAX_ROLES} roles")
    return roles


def check_username(username: str) -> None:
    """Raise ValueError for a username that cannot exist."""
    if not is_username(username):
        raise ValueError("a username has 1 to 150 letters, digits or _.@+- characters")


def normalize_domain(domain: str) -> str:
    """Return a domain as docs/protocol.md section 1 defines it; raise ValueError if it cannot be one."""
    try:
        return parse_domain(domain)
    except InvalidHost:
        raise ValueError(f"{domain!r} is not a host name") from None


def split_key(key: str) -> tuple[str, str]:
    """Split a ``[users]`` key ``username@domain`` into a valid username and a normalized domain."""
    username, at, domain = key.rpartition("@")
    if not at:
        raise ValueError("expected username@domain")
    check_username(username)
    return username, normalize_domain(domain)


def find(username: str):
    """Return the user record of the current domain, or None."""
    if not is_username(username):
        return None
    with storage() as db:
        return db.get(User, username)


def create(username: str, password_hash: str, now: float) -> bool:
    """Create a user in the current domain; return False if the username is taken (even in a race)."""
    check_username(username)
    try:
        with storage() as db:
            if db.get(User, username) is not None:
                return False
            db.insert(User, id=username, username=username, password=password_hash, created=int(now))
    except VersionConflict:
        return False
    return True


def set_password(username: str, password_hash: str, expected_hash: str | None = None) -> bool:
    """Replace a user's hash (only if it still is ``expected_hash``, when given); return whether it changed."""
    try:
        with storage() as db:
            record = db.get(User, username)
            if record is None or (expected_hash is not None and record.password != expected_hash):
                return False
            record.password = password_hash
    except VersionConflict:
        return False
    return True


def roles_of(username: str) -> tuple[str, ...]:
    """The roles of a user of the current domain, as stored; none for a user that does not exist."""
    record = find(username)
    if record is None or not isinstance(record.roles, list):
        return ()
    return tuple(record.roles)


def set_roles(username: str, roles: list[str], epoch: RolesEpoch) -> bool | None:
    """Give a user of the current domain exactly these roles: True if they changed, False if they were
    already those, None if there is no such user. A concurrent write of the user is retried, never lost.

    Once the record holds them, the domain's roles ``epoch`` changes, so that sessions stop using the roles
    they carry (:mod:`bastion_auth.roles`) and the user's next call has the new ones.
    """
    wanted = sorted(set(roles))
    for _ in range(10):
        try:
            with storage() as db:
                record = db.get(User, username) if is_username(username) else None
                if record is None:
                    return None
                if record.roles == wanted:
                    return False
                record.roles = wanted
            epoch.changed(current().domain)
            return True
        except VersionConflict:
            continue  # another worker or command wrote the user meanwhile: read it again
    raise VersionConflict(f"user {username} kept changing; roles not set")


def delete(username: str) -> bool:
    """Delete a user of the current domain, with its passkeys (in one unit of work); return whether it existed."""
    from bastion_auth.passkey_store import delete_all

    with storage() as db:
        record = db.get(User, username)
        if record is None:
            return False
        delete_all(db, username)
        db.delete(record)
    return True


def list_usernames() -> list[str]:
    """Return the usernames of the current domain, oldest first."""
    with storage() as db:
        return [r.username for r in db.select(User)]
