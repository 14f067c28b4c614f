"""The version of the kernel distribution (``bastion``)."""

__version__ = "0.2.0"
