"""The web UI and the browser client are served, and obey the static pages' CSP by construction."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import bastion_todo
import pytest
from falcon.testing import TestClient

STATIC = Path(bastion_todo.STATIC_DIR)


@pytest.fixture
def client(app):
    return TestClient(app, headers={"Host": "localhost"})


@pytest.mark.parametrize("path, content_type", [
    ("/", "text/html"),
    ("/index.html", "text/html"),
    ("/app.js", "text/javascript"),
    ("/app.css", "text/css"),
    ("/bastion/bastion.js", "text/javascript"),
])
def test_the_ui_and_the_client_are_served(client, path, content_type):
    response = client.simulate_get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(content_type)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp


@pytest.mark.parametrize("host", ["alpha.localhost", "beta.localhost", "127.0.0.1"])
def test_the_ui_is_served_on_every_allowed_host(app, host):
    response = TestClient(app).simulate_get("/", headers={"Host": host})
    assert response.status_code == 200
    assert b'class="todoapp"' in response.content


def test_the_ui_is_not_served_on_other_hosts(app):
    response = TestClient(app).simulate_get("/", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert response.json["exc"] == "InvalidHost"


class _Inventory(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_data(self, data):
        if getattr(self, "_in_script", False) and data.strip():
            self.inline_script = True

    def handle_endtag(self, tag):
        self._in_script = False


def test_the_page_has_no_inline_code_or_style_and_no_third_party_resource():
    page = _Inventory()
    page.feed((STATIC / "index.html").read_text("utf-8"))
    assert not page.inline_script
    assert all(tag != "style" for tag, _ in page.tags)
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], tag
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"^(https?:)?//", value), value
    scripts = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    assert scripts == ["/bastion/bastion.js", "/app.js", "/totp.js"]  # the site's own, nothing else


def test_the_scripts_never_write_markup_or_inline_styles():
    for name in ("app.js",):
        source = (STATIC / name).read_text("utf-8")
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source
        assert ".style" not in source and "eval(" not in source


def test_the_stylesheet_loads_nothing_from_elsewhere():
    css = (STATIC / "app.css").read_text("utf-8")
    assert "@import" not in css
    for url in re.findall(r"url\(([^)]*)\)", css):
        assert url.strip("\"'").startswith("data:"), url
