"""Settings, from the environment (the template reads them with pydantic-settings; plain ``os.environ`` here)."""

import os

#: The SQLite file.
DB_PATH = os.environ.get("BENCH_PEER_DB", "peer.sqlite3")
#: The key that signs the access tokens (HS256).
SECRET_KEY = os.environ.get("BENCH_PEER_SECRET", "bench-peer-not-a-secret-" + "x" * 40)
#: How long an access token is valid: eight days, the template's default.
ACCESS_TOKEN_EXPIRE_MINUTES = 60 * 24 * 8
