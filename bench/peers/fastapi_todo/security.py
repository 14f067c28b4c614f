"""Password hashes (argon2, through pwdlib) and access tokens (JWT, HS256, through PyJWT)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from bench.peers.fastapi_todo import config

ALGORITHM = "HS256"

password_hash = PasswordHash((Argon2Hasher(),))


def create_access_token(subject: str | Any, expires_delta: timedelta) -> str:
    expire = datetime.now(UTC) + expires_delta
    return jwt.encode({"exp": expire, "sub": str(subject)}, config.SECRET_KEY, algorithm=ALGORITHM)


def verify_password(plain_password: str, hashed_password: str) -> bool:
    return password_hash.verify(plain_password, hashed_password)


def get_password_hash(password: str) -> str:
    return password_hash.hash(password)


#: Verified against when the user does not exist, so that an unknown name takes as long as a wrong password
#: (a fixed hash of another password, with the hasher's parameters: computing one at import would cost each
#: worker an argon2 hash at start).
DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$7UIVvywd9IhuhsU2YiIE1w$vEe+gmtTU/J9PSV33F6OZIxUry0F08mdIZFgpc5gRoM"
