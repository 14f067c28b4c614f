"""The path operations: log in (OAuth2 password flow), list, create and update todos.

They are plain ``def`` functions, as in the template: FastAPI runs them, and the sync dependencies, in its
threadpool.
"""

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from bench.peers.fastapi_todo import config, security
from bench.peers.fastapi_todo.deps import CurrentUser, SessionDep
from bench.peers.fastapi_todo.models import Todo, User
from bench.peers.fastapi_todo.schemas import TodoCreate, TodoPublic, TodoUpdate, Token

login = APIRouter(tags=["login"])
todos = APIRouter(prefix="/todos", tags=["todos"])


def authenticate(session: SessionDep, username: str, password: str) -> User | None:
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        security.verify_password(password, security.DUMMY_HASH)
        return None
    if not security.verify_password(password, user.hashed_password):
        return None
    return user


@login.post("/login/access-token")
def login_access_token(session: SessionDep, form_data: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """OAuth2 compatible token login: an access token for future requests."""
    user = authenticate(session, form_data.username, form_data.password)
    if user is None:
        raise HTTPException(status_code=400, detail="Incorrect username or password")
    if not user.is_active:
        raise HTTPException(status_code=400, detail="Inactive user")
    expires = timedelta(minutes=config.ACCESS_TOKEN_EXPIRE_MINUTES)
    return Token(access_token=security.create_access_token(user.id, expires_delta=expires))


@todos.get("/", response_model=list[TodoPublic])
def read_todos(session: SessionDep, current_user: CurrentUser) -> Any:
    """The current user's todos, in id order."""
    return session.scalars(select(Todo).where(Todo.owner_id == current_user.id).order_by(Todo.id)).all()


@todos.post("/", response_model=TodoPublic, status_code=status.HTTP_201_CREATED)
def create_todo(*, session: SessionDep, current_user: CurrentUser, todo_in: TodoCreate) -> Any:
    todo = Todo(text=todo_in.text, owner_id=current_user.id, vsn=1)
    session.add(todo)
    session.commit()
    session.refresh(todo)
    return todo


@todos.patch("/{id}", response_model=TodoPublic)
def update_todo(*, session: SessionDep, current_user: CurrentUser, id: int, todo_in: TodoUpdate) -> Any:
    """Change a todo of the current user's; 409 when ``vsn`` is not its version (any more)."""
    todo = session.get(Todo, id)
    if todo is None or todo.owner_id != current_user.id:
        raise HTTPException(status_code=404, detail="Todo not found")
    if todo.vsn != todo_in.vsn:
        raise HTTPException(status_code=409, detail="Todo changed")
    for name, value in todo_in.model_dump(exclude_unset=True, exclude={"vsn"}).items():
        setattr(todo, name, value)
    todo.vsn = todo_in.vsn + 1
    session.add(todo)
    try:
        session.commit()
    except StaleDataError:
        session.rollback()
        raise HTTPException(status_code=409, detail="Todo changed") from None
    session.refresh(todo)
    return todo
