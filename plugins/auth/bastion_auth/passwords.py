"""Password hashing with passlib's CryptContext (argon2id through argon2-cffi)."""

from __future__ import annotations

from passlib.context import CryptContext

from kernel.passwords import argon2_context


def make_context(settings) -> CryptContext:
    """Build the hashing policy from ``[auth]``; older parameters are flagged by ``needs_update``."""
    return argon2_context(settings.argon2_memory_cost, settings.argon2_time_cost, settings.argon2_parallelism)


class Passwords:
    """Hashes, verifies and upgrades passwords under one policy."""

    def __init__(self, settings):
        self.context = make_context(settings)
        self.min_length = settings.min_password_length
        self.max_length = settings.max_password_length

    def warm(self) -> None:
        """Compute the dummy hash now, so the first unknown user costs what every other does."""
        self.context.dummy_verify()

    def check_new(self, password: str) -> None:
        """Raise ValueError unless a new password follows the policy."""
        if not isinstance(password, str):
            raise ValueError("a password is a string")
        if not self.min_length <= len(password) <= self.max_length:
            raise ValueError(f"a password has {self.min_length} to {self.max_length} characters")

    def hash(self, password: str) -> str:
        """Hash a new password (checked against the policy)."""
        self.check_new(password)
        return self.context.hash(password)

    def identify(self, hashed: str) -> bool:
        """Whether a string is a hash this policy can verify."""
        try:
            return self.context.identify(hashed) is not None
        except (ValueError, TypeError):
            return False

    def verify(self, password: str, hashed: str | None) -> tuple[bool, bool]:
        """Return ``(valid, needs_update)``; an unknown user (None) costs a dummy verification."""
        if hashed is None or len(password) > self.max_length:
            self.context.dummy_verify()
            return False, False
        try:
            valid = self.context.verify(password, hashed)
        except (ValueError, TypeError):
            self.context.dummy_verify()
            return False, False
        return valid, valid and self.context.needs_update(hashed)
