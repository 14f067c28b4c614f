"""Bastion: a small, secure-by-default application server.

Plugin authors import what they need from here::

    from kernel import hookimpl, service, storage
"""

import pluggy

__version__ = "0.1.0"

#: Marks a plugin's hook implementations.
hookimpl = pluggy.HookimplMarker("bastion")

from kernel.services import service  # noqa: E402
from kernel.store import storage  # noqa: E402

__all__ = ["hookimpl", "service", "storage", "__version__"]
