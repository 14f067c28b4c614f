"""The SQL plugin's part of ``bastion check --deploy``: SQLite's single machine, PostgreSQL over the network."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bastion_storage_sql.engine import is_sql_url
from kernel import Problem, StorageURL, is_loopback_host

#: ``sslmode`` values that encrypt and check the server's certificate.
VERIFIED = ("verify-ca", "verify-full")


def problems(urls: Mapping[str, str]) -> list[Problem]:
    """SQLite (one machine: warned), PostgreSQL on another host without a password or without verified TLS.

    ``urls`` are the kernel's storage URLs by their ``[bastion]`` key (``PluginSettings.storage_urls``).
    """
    found: list[Problem] = []
    sqlite_keys = []
    for key, url in urls.items():
        if not is_sql_url(url):
            continue
        shown = StorageURL(url).redacted
        try:
            parsed = make_url(url.strip())
        except ArgumentError:
            continue  # the storage itself says so when it opens
        if parsed.get_backend_name() == "sqlite":
            sqlite_keys.append(key)
            continue
        host = parsed.host or parsed.query.get("host")
        if isinstance(host, tuple):
            host = host[0]
        if host and not str(host).startswith("/") and not is_loopback_host(str(host)):
            if parsed.password is None and "sslcert" not in parsed.query:
                found.append(Problem.warning(
                    "sql.W002", f"[bastion] {key} = {shown}: PostgreSQL on {host} with no password in the URL: "
                    "unless a .pgpass file or PGPASSWORD in the server's environment gives one, the database lets in "
                    "whoever reaches it as that user",
                    "postgresql://user:${PGPASSWORD}@host/db, with the password in the environment"))
            if parsed.query.get("sslmode") not in VERIFIED:
                found.append(Problem.warning(
                    "sql.W003", f"[bastion] {key} = {shown}: PostgreSQL on {host} without sslmode=verify-full: "
                    "records, session keys and password hashes may cross the network in clear, or to an impostor",
                    "add ?sslmode=verify-full (and sslrootcert=...) to the URL"))
    if sqlite_keys:
        found.append(Problem.warning(
            "sql.W001", f"[bastion] {' and '.join(sqlite_keys)}: SQLite serves one machine (its workers share one "
            "file); a second node would have data, sessions and bans of its own",
            "stay on one node, or move to PostgreSQL (records) and Redis or PostgreSQL (state) before adding one"))
    return found
