"""The WSGI entry point: ``gunicorn kernel.wsgi:app`` builds the runtime, then the app, from the environment."""

import logging

from kernel.app import create_app
from kernel.config import load_config
from kernel.runtime import Runtime

_config = load_config()
logging.getLogger("bastion").setLevel(_config.bastion.log_level.upper())
runtime = Runtime(_config)
try:
    runtime.start()
except BaseException:
    runtime.close()  # an outage during start-up: the worker tries again later (kernel.worker.Starting)
    raise
app = create_app(runtime)
