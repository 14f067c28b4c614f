"""The one way the test launchers pick a port."""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1", bus_offset: int | None = None) -> int:
    """Return a TCP port that is free on ``host`` right now (it may be taken before it is used).

    With ``bus_offset``, the port plus that offset is free too, and both are
    valid ports: a Redis Cluster node listens on its port and on its port
    plus 10000 (its cluster bus).
    """
    if bus_offset is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    for _ in range(200):
        port = random.randint(20000, 65535 - bus_offset)
        if _free(host, port) and _free(host, port + bus_offset):
            return port
    raise OSError(f"no free pair of ports {bus_offset} apart on {host}")


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
