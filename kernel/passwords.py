"""The argon2id policy shared by ``bastion hash-password`` and the auth plugin.

Defaults are OWASP's floor for argon2id (Password Storage Cheat Sheet):
19,456 KiB of memory, 2 iterations, 1 lane.
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
    """Return a CryptContext hashing with argon2id at these parameters; weaker hashes ``needs_update``."""
    return CryptContext(schemes=["argon2"], argon2__type="ID", argon2__memory_cost=memory_cost,
                        argon2__rounds=time_cost, argon2__parallelism=parallelism)
