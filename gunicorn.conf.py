"""gunicorn settings from the ``[server]`` section, so plain ``gunicorn kernel.wsgi:app`` works.

Command-line flags (``--bind``, ``--workers``) still override these.
"""

import logging
import sys

from kernel.config import load_config
from kernel.errors import ConfigError

try:
    _config = load_config()
    _server = _config.server
    _bastion = _config.bastion
except ConfigError as exc:
    sys.exit(f"bastion: {exc}")

bind = [_server.bind]
workers = _server.workers
threads = _server.threads
timeout = _server.timeout
# Bastion's threaded worker (kernel/worker.py), with one thread too: it gathers request heads without a
# thread, bounds the head and the body by [server] header_timeout and body_timeout, and answers its refusals in JSON.
worker_class = "kernel.worker.BastionWorker"
reload = _bastion.development if _server.reload == "auto" else _server.reload == "on"
# The admin control socket (gunicorn 24+) lives at one fixed path per user; test servers would collide there.
control_socket_disable = True
forwarded_allow_ips = ""  # Bastion reads X-Forwarded-* itself, only from [bastion] trusted_proxies

_log = logging.getLogger("gunicorn.error")


def _uses_memory(url: str) -> bool:
    return url.split(":", 1)[0].lower() == "mem"


if _uses_memory(_bastion.storage) or _uses_memory(_bastion.state or _bastion.storage):
    if workers != 1:
        _log.warning("storage is mem://: each process would have its own data, so running 1 worker "
                     "(with %d threads) instead of %d", threads, workers)
    workers = 1


def on_starting(server):
    """Say where the server listens and in which mode."""
    server.log.info("Bastion %s mode, storage %s", "development" if _bastion.development else "production",
                    _bastion.storage.split("://", 1)[0] + "://…")
