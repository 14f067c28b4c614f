"""Where Bastion's gunicorn settings were before the kernel had layers: ``gunicorn -c python:kernel.gunicorn_conf``
keeps working. They live in :mod:`kernel.server.gunicorn_conf`."""

from kernel.server.gunicorn_conf import *  # noqa: F403
