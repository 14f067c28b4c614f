"""Passwords: the argon2id policy (passlib's CryptContext through argon2-cffi) and the length rule.

The defaults are OWASP's floor for argon2id (Password Storage Cheat Sheet):
19,456 KiB of memory, 2 iterations, 1 lane. ``bastion hash-password`` and the
plugin share this one policy, read from ``[auth]``, so that a hash made on
the command line needs no upgrade at the first login.
"""

from __future__ import annotations

from passlib.context import CryptContext

ARGON2_MEMORY_COST = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


def argon2_context(memory_cost: int = ARGON2_MEMORY_COST, time_cost: int = ARGON2_TIME_COST,
                   parallelism: int = ARGON2_PARALLELISM) -> CryptContext:
    """Return a CryptContext hashing with argon2id at these parameters; other hashes ``needs_update``."""
    return CryptContext(schemes=["argon2"], argon2__type="ID", argon2__memory_cost=memory_cost,
                        argon2__rounds=time_cost, argon2__parallelism=parallelism)


class Passwords:
    """Hashes, verifies and upgrades passwords under one policy (the ``[auth]`` settings).

    The hash context (argon2id's parameters) is the server's; the length rule
    may be a tenant's (:meth:`with_lengths`), sharing the context.
    """

    def __init__(self, settings, context: CryptContext | None = None):
        self.context = context if context is not None else argon2_context(
            settings.argon2_memory_cost, settings.argon2_time_cost, settings.argon2_parallelism)
        self.min_length = settings.min_password_length
        self.max_length = settings.max_password_length

    def with_lengths(self, settings) -> Passwords:
        """This policy with the length rule of ``settings`` (a tenant's), the same hash context."""
        return Passwords(settings, self.context)

    def warm(self) -> None:
        """Compute the dummy hash now, so the first unknown user costs what every other does."""
        self.context.dummy_verify()

    def broken_rule(self, password: str) -> tuple[str, int] | None:
        """The rule of the policy a new password breaks, with its bound (``("min_length", 8)``), or None."""
        if len(password) < self.min_length:
            return "min_length", self.min_length
        if len(password) > self.max_length:
            return "max_length", self.max_length
        return None

    def check_new(self, password: str) -> None:
        """Raise ValueError unless a new password follows the policy."""
        if not isinstance(password, str):
            raise ValueError("a password is a string")
        if self.broken_rule(password) is not None:
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
