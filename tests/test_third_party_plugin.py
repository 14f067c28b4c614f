"""A third-party plugin written from the README alone: installed with pip, listed, served, and upgraded.

The plugin's module and its pyproject.toml are the README's own code blocks,
so the README cannot drift from what works. It is installed with pip into a
folder of its own (``--target``), never into the test environment, and found
through ``PYTHONPATH`` like any installed distribution. The model upgrade
adds a field and a service between two server starts, on SQLite, PostgreSQL
and Redis: the records stored before read with the new field's default and
update cleanly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kernel.client import Client
from kernel.testing import GunicornServer, write_config

from .e2e_support import DOMAIN, PASSWORD, USERNAME, sections

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: What the plugin's second version adds: a field with a default, shown and changed by its services.
UPGRADE = [
    ('record.merge(name="")', 'record.merge(name="", lang="en")'),
    ('"name": record.name}', '"name": record.name, "lang": record.lang}'),
]
REGREET = '''

@service
def regreet(id: str, vsn: int, lang: str):
    with storage() as db:
        record = db.fetch(Greeting, id, vsn)
        record.lang = lang
    return Greeting.to_dict(record)


@hookimpl
def bastion_services():
    return [greet, greetings, regreet]
'''


def readme_blocks() -> tuple[str, str]:
    """The README's plugin module and its pyproject.toml."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Writing a plugin"):]
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    toml = re.search(r"```toml\n(.*?)```", section, re.DOTALL).group(1)
    return python, toml


def install(source: str, toml: str, folder: Path) -> Path:
    """Write the plugin's files and pip-install them into ``folder/site``; return that folder."""
    project = folder / "hello"
    project.mkdir(parents=True)
    (project / "bastion_hello.py").write_text(source, encoding="utf-8")
    (project / "pyproject.toml").write_text(toml, encoding="utf-8")
    site = folder / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(project)], check=True, capture_output=True, timeout=300)
    return site


def upgraded(source: str) -> str:
    for old, new in UPGRADE:
        assert old in source, f"the README's plugin changed: {old!r} is no longer in it"
        source = source.replace(old, new)
    # The second version lists one more service: its own bastion_services replaces the first.
    return source.replace("@hookimpl\ndef bastion_services():\n    return [greet, greetings]\n", "") + REGREET


@pytest.fixture(scope="module")
def plugin_v1(tmp_path_factory) -> Path:
    python, toml = readme_blocks()
    return install(python, toml, tmp_path_factory.mktemp("plugin-v1"))


@pytest.fixture(scope="module")
def plugin_v2(tmp_path_factory) -> Path:
    python, toml = readme_blocks()
    return install(upgraded(python), toml.replace('version = "1.0"', 'version = "2.0"'),
                   tmp_path_factory.mktemp("plugin-v2"))


def environment(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def test_bastion_plugins_lists_the_installed_plugin(plugin_v1, tmp_path):
    config = write_config({"bastion": {"development": True, "storage": "mem://"}}, tmp_path)
    listing = subprocess.run([sys.executable, "-m", "kernel.cli", "--config", str(config), "plugins"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, **environment(plugin_v1)})
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^hello  bastion-hello 1\.0$", listing.stdout, re.MULTILINE), listing.stdout
    assert "    bastion_models" in listing.stdout and "    bastion_services" in listing.stdout


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bastion.sqlite3"
    if request.param == "postgresql":
        from kernel.testing import PostgresServer

        server = PostgresServer().start()
        request.addfinalizer(server.close)
        return server.create_database(f"plugin_{uuid.uuid4().hex[:8]}")
    from kernel.testing import RedisServer

    server = RedisServer()
    server.start()
    request.addfinalizer(server.stop)
    return server.url


def test_the_plugin_serves_signed_calls_and_survives_a_model_upgrade(plugin_v1, plugin_v2, storage_url):
    config = sections(storage_url)
    with GunicornServer(config, workers=2, env=environment(plugin_v1)) as server:
        client = Client(server.url, host=DOMAIN)
        client.login(USERNAME, PASSWORD)
        first = client.call("greet", "Ada")
        assert first == {"hello": "Ada", "by": USERNAME, "id": first["id"], "vsn": 1, "name": "Ada"}
        assert client.call("greetings") == [{"id": first["id"], "vsn": 1, "name": "Ada"}]

    # The second version of the plugin: a new field with a default, a new service; same storage.
    with GunicornServer(config, workers=2, env=environment(plugin_v2)) as server:
        client = Client(server.url, host=DOMAIN)
        client.login(USERNAME, PASSWORD)
        assert client.call("greetings") == [{"id": first["id"], "vsn": 1, "name": "Ada", "lang": "en"}]
        assert client.call("regreet", first["id"], 1, "fr") == {"id": first["id"], "vsn": 2, "name": "Ada",
                                                                "lang": "fr"}
        second = client.call("greet", "Grace")
        assert client.call("greetings") == [{"id": first["id"], "vsn": 2, "name": "Ada", "lang": "fr"},
                                            {"id": second["id"], "vsn": 1, "name": "Grace", "lang": "en"}]
