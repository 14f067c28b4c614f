"""gunicorn settings for a checkout: the packaged ones (``kernel.server.gunicorn_conf``), from ``[server]``.

So plain ``gunicorn kernel.wsgi:app`` here binds 127.0.0.1:9000, as ``make run`` does.
"""

from kernel.server.gunicorn_conf import *  # noqa: F403
