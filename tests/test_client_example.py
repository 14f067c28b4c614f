"""docs/client.md's development example runs as written against a development server, as `make run` starts one:
only the port (a free one) and the demo user's password (printed by the server at start-up) differ."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from kernel.testing import BastionServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def development_example() -> str:
    """The Python block of docs/client.md that talks to http://localhost:9000."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "client.md").read_text(), re.DOTALL)
    [block] = [block for block in blocks if "http://localhost:9000" in block]
    return block


def demo_password(server: BastionServer, timeout: float = 30) -> str:
    """The demo user's password, from the line the server prints when it makes the user (before it serves)."""
    deadline = time.monotonic() + timeout
    while not (printed := re.search(r"log in at \S+ as demo / (\S+)", server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)  # the line is written by the worker; nothing signals it
    return printed.group(1)


def test_the_development_example_of_the_client_page_runs(capsys):
    sections = {"bastion": {"development": True, "storage": "mem://"}}
    with BastionServer(sections) as server:
        code = (development_example().replace("http://localhost:9000", f"http://localhost:{server.port}")
                .replace("the password make run printed", demo_password(server)))
        exec(compile(code, "docs/client.md", "exec"), {})
    assert capsys.readouterr().out == "['Try Bastion from Python']\n"
