"""The tables: a user and its todos (the Django peer's schema: owner, text, done, vsn)."""

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    todos: Mapped[list["Todo"]] = relationship(back_populates="owner", cascade="all, delete-orphan")


class Todo(Base):
    """One thing to do, private to its owner; ``vsn`` is its version, checked by every update.

    ``vsn`` is SQLAlchemy's version counter: the UPDATE of a flush carries ``WHERE vsn = <the version loaded>``
    and raises ``StaleDataError`` when no row matched (a concurrent update got there first). The application
    sets the next version itself (``version_id_generator=False``), so that every accepted update counts, even
    one that changes nothing else.
    """

    __tablename__ = "todo"
    __table_args__ = (Index("ix_todo_owner_id_id", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(String(1000))
    done: Mapped[bool] = mapped_column(default=False)
    vsn: Mapped[int] = mapped_column(default=1)
    owner: Mapped[User] = relationship(back_populates="todos")

    __mapper_args__ = {"version_id_col": vsn, "version_id_generator": False}
