"""The Pydantic models of the requests and answers."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"


class TokenPayload(BaseModel):
    sub: str | None = None


class TodoCreate(BaseModel):
    text: Text


class TodoUpdate(BaseModel):
    """The fields to change, and the version the client saw."""

    text: Text | None = None
    done: bool | None = None
    vsn: int


class TodoPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    vsn: int
    text: str
    done: bool
