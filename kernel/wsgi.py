"""The WSGI entry point: ``gunicorn kernel.wsgi:app``."""

from kernel.app import create_app
from kernel.config import load_config

app = create_app(load_config())
