"""Where Bastion's gunicorn worker was before the kernel had layers: ``worker_class =
"kernel.worker.BastionWorker"`` in a gunicorn configuration keeps working. It lives in :mod:`kernel.server.worker`."""

from kernel.server.worker import BastionLogger, BastionWorker

__all__ = ["BastionLogger", "BastionWorker"]
