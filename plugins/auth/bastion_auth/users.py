"""Users: one record per (domain, username), stored through the kernel's storage API, roles included."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from kernel import Errors, InvalidHost, VersionConflict, current, parse_domain, storage

T = TypeVar("T")

if TYPE_CHECKING:
    from bastion_auth.roles import RolesEpoch

#: The longest username, in characters.
MAX_USERNAME = 150
USERNAME = re.compile(rf"[A-Za-z0-9_.@+-]{{1,{MAX_USERNAME}}}")
#: A role's name: 1 to 64 letters, digits or ``_.-`` (the permissions plugin accepts the same).
ROLE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The most roles one user holds.
MAX_ROLES = 64
#: A TOTP secret as stored (base32, at most 128 characters), or nothing.
BASE32 = re.compile(r"[A-Z2-7]{0,128}")
#: A recovery code's hash as stored.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: The most recovery codes one user holds.
MAX_RECOVERY = 16


def is_username(value: Any) -> bool:
    """Whether a value can be a username: 1 to 150 letters, digits or ``_.@+-``."""
    return isinstance(value, str) and USERNAME.fullmatch(value) is not None


def is_role(value: Any) -> bool:
    """Whether a value can be a role's name: 1 to 64 letters, digits or ``_.-``."""
    return isinstance(value, str) and ROLE.fullmatch(value) is not None


class User:
    """A user of one domain; the record id is the username (a natural key).

    ``roles`` (added after the first release: older records read it as ``[]``)
    is a sorted list of role names. The second factor (:mod:`bastion_auth.totp`; older records read
    them as none): ``totp``, the active TOTP secret (base32, ``""`` when off); ``totp_pending``, the
    secret of an enrolment not yet confirmed; ``recovery``, the hashes of the unused recovery codes.
    """

    __model__ = "User"

    @classmethod
    def initialize(cls, record):
        record.merge(username="", password="", created=0, roles=[], totp="", totp_pending="", recovery=[])

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
        for name in ("totp", "totp_pending"):
            if not isinstance(record.get(name), str) or not BASE32.fullmatch(record.get(name)):
                errors[name].invalid = "a base32 secret, or empty"
        recovery = record.get("recovery")
        if not isinstance(recovery, list) or len(recovery) > MAX_RECOVERY or not all(
                isinstance(h, str) and SHA256_HEX.fullmatch(h) for h in recovery):
            errors.recovery.invalid = f"at most {MAX_RECOVERY} SHA-256 hashes"
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


#: How many times a change of a user is read and tried again when another writer wrote the user meanwhile.
ATTEMPTS = 10


def _change(username: str, change: Callable[[Any], T], undone: str) -> T:
    """Apply ``change(record)`` (None for no such user) to a user of the current domain in one unit of work and
    return what it returns, once its write is committed at the version it read; read again and tried again when
    another worker or command wrote the user meanwhile, at most :data:`ATTEMPTS` times, then VersionConflict
    (``undone`` says what was not done)."""
    for _ in range(ATTEMPTS):
        try:
            with storage() as db:
                result = change(db.get(User, username) if is_username(username) else None)
            return result
        except VersionConflict:
            continue  # another worker or command wrote the user meanwhile: read it again
    raise VersionConflict(f"user {username} kept changing; {undone}")


def set_second_factor(username: str, *, expected_pending: str | None = None, require_active: bool = False,
                      **fields: Any) -> bool:
    """Set second-factor fields (``totp``, ``totp_pending``, ``recovery``) of a user of the current domain; return
    whether the user exists (and, with ``expected_pending``, still has that pending secret; with
    ``require_active``, an active factor). A concurrent write of the user is retried, never lost."""

    def change(record: Any) -> bool:
        if record is None:
            return False
        if expected_pending is not None and record.totp_pending != expected_pending:
            return False
        if require_active and not record.totp:
            return False
        record.merge(**fields)
        return True

    return _change(username, change, "second factor not set")


def use_recovery_code(username: str, code_hash: str) -> bool:
    """Use up one recovery code of a user of the current domain: remove its hash; return whether it was there.

    Atomic on every driver: the record is written only at the version read, so of two logins with one code,
    the one that loses the race reads the record again and no longer finds the code.
    """

    def change(record: Any) -> bool:
        if record is None or not record.totp or code_hash not in (record.recovery or []):
            return False
        record.recovery = [h for h in record.recovery if h != code_hash]
        return True

    try:
        return _change(username, change, "recovery code not used")
    except VersionConflict:
        return False


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

    def change(record: Any) -> bool | None:
        if record is None:
            return None
        if record.roles == wanted:
            return False
        record.roles = wanted
        return True

    changed = _change(username, change, "roles not set")
    if changed:
        epoch.changed(current().domain)
    return changed


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
