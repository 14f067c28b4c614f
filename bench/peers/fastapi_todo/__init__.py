"""The TODO API the way a FastAPI user writes it, after FastAPI's tutorial and its full-stack template:
SQLAlchemy 2 ORM sessions per request (a ``get_db`` dependency), the OAuth2 password flow answering a JWT
(HS256, PyJWT), argon2 password hashes (pwdlib), the current user loaded from the token on every request, and
Pydantic models in and out. SQLite in WAL mode.

The models are SQLAlchemy's own declarative ones with separate Pydantic schemas, not SQLModel (the
template's layer over both): underneath, the session, the queries and the per-request work are the same
SQLAlchemy ones, the very release Bastion's SQL driver runs, and the peer needs one package fewer.

``BENCH_PEER_DB`` names the SQLite file. Served by gunicorn with uvicorn workers as
``bench.peers.fastapi_todo.main:app`` (settings in ``gunicorn_conf``); ``python -m bench.peers.fastapi_todo.setup``
creates the schema, the users and the todos (bulk inserts).
"""
