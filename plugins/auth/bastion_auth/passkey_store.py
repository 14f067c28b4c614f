"""Passkeys as records: one ``Passkey`` per credential, in its user's domain, found by its id or its user.

A passkey is stored beside its user (the same domain, the same storage), so it travels with the tenant
(``bastion export``, ``import``, ``copy``), goes with the user (:func:`bastion_auth.users.delete` removes a user's
passkeys in the same unit of work) and with the tenant (``bastion delete-tenant``). Its record id is
:func:`record_id` of the credential id: credential ids may be longer than a record id may be, and this id is also
what a client names a passkey by (``rename_passkey``, ``remove_passkey``). Nothing here is secret: a passkey's
public key verifies signatures and makes none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from kernel import Errors, VersionConflict, b64url, is_text, storage

#: The longest name of a passkey, in characters.
MAX_NAME = 64
#: The most passkeys one user holds.
MAX_PER_USER = 20


def record_id(credential_id: bytes) -> str:
    """The record id of a credential: b64url of the SHA-256 of its id (43 characters)."""
    return b64url(hashlib.sha256(credential_id).digest())


def is_name(value: Any) -> bool:
    """Whether a value can be a passkey's name: 1 to 64 characters, not blank, no control character."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_NAME and bool(value.strip()) and is_text(value)
            and not any(ord(c) < 32 or ord(c) == 127 for c in value))


class Passkey:
    """One WebAuthn credential of a user: its public key (COSE, b64url), signature counter and user handle.

    ``credential_id`` and ``user_handle`` are b64url; ``created`` and ``last_used`` whole seconds (``last_used``
    0 until its first login); ``aaguid`` names the authenticator's model when it says (zeros otherwise).
    """

    __model__ = "Passkey"

    @classmethod
    def initialize(cls, record):
        record.merge(username="", credential_id="", public_key="", sign_count=0, user_handle="", name="",
                     created=0, last_used=0, aaguid="", transports=[])

    @classmethod
    def validate(cls, record):
        errors = Errors()
        if not is_name(record.name):
            errors.name.invalid = f"1 to {MAX_NAME} characters, not blank"
        if not isinstance(record.sign_count, int) or record.sign_count < 0:
            errors.sign_count.invalid = "a counter"
        return errors

    @classmethod
    def index(cls, record):
        return {"username": record.username}

    @classmethod
    def to_dict(cls, record) -> dict[str, Any]:
        """What the user and the operator see of a passkey: never its key or its credential id."""
        return {"id": record._id, "name": record.name, "created": record.created,
                "last_used": record.last_used or None}


def of_user(username: str) -> list:
    """The passkeys of a user of the current domain, oldest first."""
    with storage() as db:
        return list(db.select(Passkey, where={"username": username}))


def find(credential_id: bytes):
    """The passkey of this credential id in the current domain, or None."""
    with storage() as db:
        record = db.get(Passkey, record_id(credential_id))
    if record is None or record.credential_id != b64url(credential_id):
        return None
    return record


def find_by_id(username: str, passkey_id: str):
    """A passkey of ``username`` in the current domain by its id, or None."""
    if not isinstance(passkey_id, str) or len(passkey_id) != 43:
        return None
    with storage() as db:
        record = db.get(Passkey, passkey_id)
    return record if record is not None and record.username == username else None


def add(username: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Store a new passkey of ``username``; return its description, or None when its credential is already
    stored (registered twice, or by another user: a credential id is the authenticator's, never reused)."""
    rid = record_id(fields["credential_id_bytes"])
    stored = {key: value for key, value in fields.items() if key != "credential_id_bytes"}
    try:
        with storage() as db:
            if db.get(Passkey, rid) is not None:
                return None
            record = db.insert(Passkey, id=rid, username=username, **stored)
            described = Passkey.to_dict(record)
    except VersionConflict:
        return None
    return described


def used(passkey_id: str, expected_count: int, new_count: int, now: float) -> bool:
    """Record a login: the new signature counter and ``last_used``, only if the counter is still the one the
    assertion was verified against (a concurrent login of the same passkey raced it): return whether it was."""
    try:
        with storage() as db:
            record = db.get(Passkey, passkey_id)
            if record is None or record.sign_count != expected_count:
                return False
            record.sign_count = new_count
            record.last_used = int(now)
    except VersionConflict:
        return False
    return True


#: How many times a change of a user's passkey is tried again when a login's counter write raced it.
ATTEMPTS = 5


def _change(username: str, passkey_id: str, change: Callable[[Any, Any], Any], missing: Any) -> Any:
    """Apply ``change(db, record)`` to a passkey of ``username`` in one unit of work and return what it returns, or
    ``missing`` when the user has no such passkey; tried again when a login wrote its counter meanwhile."""
    for _ in range(ATTEMPTS):
        try:
            with storage() as db:
                record = db.get(Passkey, passkey_id) if isinstance(passkey_id, str) else None
                if record is None or record.username != username:
                    return missing
                result = change(db, record)
            return result
        except VersionConflict:
            continue  # a login wrote its counter meanwhile
    raise VersionConflict("the passkey kept changing; try again")


def rename(username: str, passkey_id: str, name: str) -> dict[str, Any] | None:
    """Rename a passkey of ``username``; return its description, or None when it has no such passkey."""

    def renamed(db: Any, record: Any) -> dict[str, Any]:
        record.name = name
        return Passkey.to_dict(record)

    return _change(username, passkey_id, renamed, None)


def remove(username: str, passkey_id: str) -> bool:
    """Remove a passkey of ``username``; return whether it existed."""

    def removed(db: Any, record: Any) -> bool:
        db.delete(record)
        return True

    return bool(_change(username, passkey_id, removed, False))


def delete_all(db, username: str) -> int:
    """Delete every passkey of ``username`` in the unit of work ``db`` (the user's removal); return how many."""
    records = list(db.select(Passkey, where={"username": username}))
    for record in records:
        db.delete(record)
    return len(records)


def count_of(username: str) -> int:
    """How many passkeys a user of the current domain has."""
    return len(of_user(username))
