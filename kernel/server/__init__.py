"""The server layer: gunicorn's settings, Bastion's gunicorn worker and ``bastion serve``.

It imports the core, operations and HTTP layers."""
