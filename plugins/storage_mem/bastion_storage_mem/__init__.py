"""Compatibility package: ``mem://`` is the kernel's now, and this package only keeps its old import path.

The in-memory driver ships with the kernel's distribution (``bastion``) as the
built-in plugin ``storage_mem`` (:mod:`kernel.storage_mem`, registered by the
kernel before any entry point), so Bastion alone serves its default storage.
This package registers nothing (no entry point, no hook): two plugins never
answer ``mem://``. It re-exports the kernel's driver, the very class, for code
that imports it from here; new code imports ``MemoryDriver`` from
``kernel.drivers``. ``BASTION_LOAD_PLUGINS=storage_mem`` names the built-in
plugin, with or without this package.
"""

from __future__ import annotations

from kernel.drivers import MemoryDriver

__all__ = ["MemoryDriver"]
