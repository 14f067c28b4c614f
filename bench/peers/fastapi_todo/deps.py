"""The dependencies: the database session and the current user (loaded from the database, by the token)."""

from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, status
from fastapi.security import OAuth2PasswordBearer
from jwt.exceptions import InvalidTokenError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from bench.peers.fastapi_todo import config, security
from bench.peers.fastapi_todo.db import get_db
from bench.peers.fastapi_todo.models import User
from bench.peers.fastapi_todo.schemas import TokenPayload

reusable_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/login/access-token")

SessionDep = Annotated[Session, Depends(get_db)]
TokenDep = Annotated[str, Depends(reusable_oauth2)]


def _unauthorized() -> HTTPException:
    return HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Could not validate credentials",
                         headers={"WWW-Authenticate": "Bearer"})


def get_current_user(session: SessionDep, token: TokenDep) -> User:
    try:
        payload = jwt.decode(token, config.SECRET_KEY, algorithms=[security.ALGORITHM])
        token_data = TokenPayload(**payload)
    except (InvalidTokenError, ValidationError):
        raise _unauthorized() from None
    if token_data.sub is None or not token_data.sub.isdigit():
        raise _unauthorized()
    user = session.get(User, int(token_data.sub))
    if user is None:
        raise _unauthorized()
    if not user.is_active:
        raise HTTPException(status_code=400, detail="Inactive user")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
