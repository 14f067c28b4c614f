"""Static files: safe paths, types, caching headers, CSP."""

from __future__ import annotations

import os

import falcon.testing
import pytest


@pytest.fixture
def site(tmp_path, kernel_app):
    root = tmp_path / "site"
    (root / "css").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "index.html").write_text("<!doctype html><title>home</title>")
    (root / "app.js").write_text("console.log(1)")
    (root / "css" / "app.css").write_text("body{}")
    (root / "docs" / "index.html").write_text("docs")
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", root / "leak.txt")
    app = kernel_app({"bastion": {"static": str(root)}})
    return falcon.testing.TestClient(app, headers={"Host": "localhost"})


def test_index_and_types(site):
    home = site.simulate_get("/")
    assert home.status_code == 200 and "home" in home.text
    assert home.headers["content-type"] == "text/html; charset=utf-8"
    assert site.simulate_get("/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert site.simulate_get("/css/app.css").headers["content-type"] == "text/css; charset=utf-8"
    assert site.simulate_get("/docs/").text == "docs"


def test_static_csp_allows_only_own_resources(site):
    csp = site.simulate_get("/").headers["content-security-policy"]
    for directive in ("default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/secret.txt", "/css/%2E%2E/%2e%2e/secret.txt",
                                  "/css/..%2f..%2fsecret.txt", "/leak.txt", "/nothing.js", "/css/missing",
                                  "/..\\secret.txt"])
def test_no_way_out_of_the_directory(site, path):
    result = site.simulate_get(path)
    assert result.status_code == 404, path
    assert "top secret" not in result.text


def test_etag_and_last_modified(site):
    first = site.simulate_get("/app.js")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert site.simulate_get("/app.js", headers={"If-None-Match": etag}).status_code == 304
    assert site.simulate_get("/app.js", headers={"If-Modified-Since": modified}).status_code == 304
    assert site.simulate_get("/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


def test_head_and_other_methods(site):
    head = site.simulate_head("/app.js")
    assert head.status_code == 200 and head.content == b""
    result = site.simulate_post("/app.js")
    assert result.status_code == 405 and result.json["exc"] == "MethodNotAllowed"
    assert result.headers["allow"] == "GET, HEAD"


def test_browser_client_is_served(kernel_app):
    from kernel.defaults import STATIC_DIR

    if not (STATIC_DIR / "bastion.js").exists():
        pytest.fail("kernel/static/bastion.js is missing")
    c = falcon.testing.TestClient(kernel_app(), headers={"Host": "localhost"})
    result = c.simulate_get("/bastion/bastion.js")
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/javascript")
