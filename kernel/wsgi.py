"""The WSGI entry point: ``gunicorn kernel.wsgi:app`` builds the runtime, then the app, from the environment.

Under gunicorn with Bastion's settings the master configured logging before
forking this worker; under another WSGI server it is configured here, from
the same INI file.
"""

from kernel.core.config import load_config
from kernel.core.runtime import Runtime
from kernel.http.app import create_app
from kernel.ops.logs import configure_logging, is_configured
from kernel.ops.metrics import Metrics

_config = load_config()
if not is_configured():
    configure_logging(_config)
runtime = Runtime(_config, metrics=Metrics.from_config(_config))
try:
    runtime.start()
except BaseException:
    runtime.close()  # an outage during start-up: the worker tries again later (kernel.server.worker.Starting)
    raise
app = create_app(runtime)
