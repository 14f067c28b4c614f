"""The core layer: hooks, plugins, configuration, the runtime, services, storage (the unit of work and the driver
protocol), errors and the request context. It imports nothing of the layers above it (``kernel.ops``,
``kernel.http``, ``kernel.server``, ``kernel.client``), nor Falcon or gunicorn: ``tests/test_layers.py`` checks it."""
