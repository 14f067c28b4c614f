"""Where the logging classes were before the kernel had layers: ``class = kernel.logs.JsonFormatter`` in an INI
file's ``[formatter_x]`` keeps working. They live in :mod:`kernel.ops.logs`."""

from kernel.ops.logs import JsonFormatter, StderrHandler, TextFormatter

__all__ = ["JsonFormatter", "StderrHandler", "TextFormatter"]
