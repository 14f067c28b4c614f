"""gunicorn settings for a checkout: the packaged ones (``kernel.server.gunicorn_conf``), from ``[server]``.

So plain ``gunicorn kernel.wsgi:app`` here binds 127.0.0.1:9000, as ``make run`` does. gunicorn executes this
file as its configuration, and the import below, seeing that, reads the configuration file then (imported
anywhere else, ``kernel.server.gunicorn_conf`` reads nothing).
"""

from kernel.server.gunicorn_conf import *  # noqa: F403
