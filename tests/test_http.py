"""The HTTP front end: routes, errors, limits and headers of docs/protocol.md sections 2, 4, 7, 8 and 9."""

from __future__ import annotations

import falcon.testing
import pytest

from kernel import current, hookimpl, service, storage
from kernel.core.errors import ValidationError

from .conftest import HeaderAuth


def body_of(result):
    assert result.headers["content-type"].startswith("application/json")
    return result.json


def test_anonymous_api_call_fails_closed_without_auth_plugin(client):
    result = client.simulate_post("/api/anything", json={})
    assert result.status_code == 401
    assert body_of(result)["exc"] == "Unauthorized"
    assert isinstance(result.json["err"], list) and all(isinstance(m, str) for m in result.json["err"])


def test_unknown_route_is_404(client):
    result = client.simulate_get("/no/such/thing")
    assert result.status_code == 404
    assert body_of(result) == {"exc": "NotFound", "err": ["no such resource: /no/such/thing"]}


def test_method_not_allowed_lists_allowed_methods(client):
    result = client.simulate_get("/api/anything")
    assert result.status_code == 405
    assert body_of(result)["exc"] == "MethodNotAllowed"
    assert "POST" in result.headers["allow"]
    assert client.simulate_delete("/healthz").headers["allow"].startswith("GET")


def test_body_over_limit_is_413_from_content_length(client):
    result = client.simulate_post("/api/x", body=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert result.status_code == 413
    assert body_of(result)["exc"] == "PayloadTooLarge"


def test_chunked_body_over_limit_is_413_without_reading_all(kernel_app):
    app = kernel_app({"bastion": {"max_body": "1KiB"}})
    reads = []

    class Stream:
        def __init__(self):
            self.sent = 0

        def read(self, size=-1):
            reads.append(size)
            chunk = b"x" * (size if size and size > 0 else 1 << 20)
            self.sent += len(chunk)
            return chunk

    env = falcon.testing.create_environ("/api/x", method="POST", host="localhost",
                                        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    env.pop("CONTENT_LENGTH", None)
    env["wsgi.input"] = Stream()
    result = falcon.testing.StartResponseMock()
    body = b"".join(app(env, result))
    assert result.status.startswith("413")
    assert b"PayloadTooLarge" in body
    assert reads == [1025]


def test_max_body_is_configurable(kernel_app):
    client = falcon.testing.TestClient(kernel_app({"bastion": {"max_body": "16"}}), headers={"Host": "localhost"})
    assert client.simulate_post("/api/x", json={"args": ["long enough"]}).status_code == 413


def test_non_json_post_is_415(client):
    result = client.simulate_post("/api/x", body="hello", headers={"Content-Type": "text/plain"})
    assert result.status_code == 415
    assert body_of(result)["exc"] == "UnsupportedMediaType"


def test_json_with_charset_is_accepted_and_empty_body_needs_no_type(client):
    ok = client.simulate_post("/api/x", body="{}", headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.json["exc"] == "Unauthorized"
    assert client.simulate_post("/api/x").json["exc"] == "Unauthorized"


def test_query_string_is_400(client):
    result = client.simulate_post("/api/x", query_string="a=1", json={})
    assert result.status_code == 400
    assert result.json["exc"] == "InvalidCall"


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "127.0.0.2"])
def test_host_outside_allowed_hosts_is_400(client, host):
    result = client.simulate_get("/healthz", headers={"Host": host})
    assert result.status_code == 400
    assert result.json["exc"] == "InvalidHost"


def test_missing_or_double_host_is_400(kernel_app):
    app = kernel_app()
    env = falcon.testing.create_environ("/healthz")
    env.pop("HTTP_HOST", None)
    start = falcon.testing.StartResponseMock()
    assert b"InvalidHost" in b"".join(app(env, start)) and start.status.startswith("400")
    env = falcon.testing.create_environ("/healthz", headers={"Host": "localhost"})
    env["HTTP_HOST"] = "localhost,localhost"
    start = falcon.testing.StartResponseMock()
    assert b"InvalidHost" in b"".join(app(env, start)) and start.status.startswith("400")


def test_development_hosts_and_explicit_patterns(kernel_app):
    dev = falcon.testing.TestClient(kernel_app())
    for host in ("localhost", "LOCALHOST.:9000", "alpha.localhost", "a.b.localhost", "127.0.0.1:9000"):
        assert dev.simulate_get("/healthz", headers={"Host": host}).status_code == 200, host
    app = kernel_app({"bastion": {"allowed_hosts": "*.example.com, api.example.org"}})
    c = falcon.testing.TestClient(app)
    assert c.simulate_get("/healthz", headers={"Host": "a.b.example.com"}).status_code == 200
    assert c.simulate_get("/healthz", headers={"Host": "example.com"}).status_code == 400
    assert c.simulate_get("/healthz", headers={"Host": "api.example.org"}).status_code == 200
    assert c.simulate_get("/healthz", headers={"Host": "localhost"}).status_code == 400


def test_security_headers_on_every_answer(client):
    for result in (client.simulate_get("/healthz"), client.simulate_post("/api/x"), client.simulate_get("/nope")):
        assert result.headers["x-content-type-options"] == "nosniff"
        assert result.headers["x-frame-options"] == "DENY"
        assert result.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in result.headers  # development mode
    api = client.simulate_post("/api/x")
    assert api.headers["cache-control"] == "no-store"
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_production_requires_https_and_sends_hsts(kernel_app):
    app = kernel_app({"bastion": {"development": False, "allowed_hosts": "localhost"}})
    c = falcon.testing.TestClient(app, headers={"Host": "localhost"})
    result = c.simulate_post("/api/x", json={})
    assert result.status_code == 403 and result.json["exc"] == "RequireSSL"
    assert result.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert c.simulate_post("/api/x", json={}, protocol="https").json["exc"] == "Unauthorized"
    assert c.simulate_get("/healthz").status_code == 200  # only /api and /auth need HTTPS


def test_production_redirects_plain_http_pages_to_https(kernel_app, tmp_path):
    """A page (the static files, a plugin's GET route) asked for over plain HTTP in production is a 301 to the
    same host and target over HTTPS; protected routes still refuse (403 RequireSSL); the operator's paths and
    HTTPS, direct or seen through a trusted proxy, are served as they are."""
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    (tmp_path / "a b.txt").write_text("x")

    class Page:
        @hookimpl
        def bastion_routes(self, routes):
            routes.get("/page/{name}", lambda request, name: {"name": name})

    sections = {"bastion": {"development": False, "allowed_hosts": "alpha.example.com", "static": str(tmp_path),
                            "trusted_proxies": "10.0.0.1"}}
    c = falcon.testing.TestClient(kernel_app(sections, plugins=[Page()]), headers={"Host": "alpha.example.com:8080"})
    for method in ("GET", "HEAD"):
        result = c.simulate_request(method, "/")
        assert result.status_code == 301 and result.headers["location"] == "https://alpha.example.com/"
        assert result.headers["strict-transport-security"] and result.headers["x-request-id"]
    result = c.simulate_get("/page/x", query_string="q=1&r=%20")
    assert (result.status_code, result.headers["location"]) == (301, "https://alpha.example.com/page/x?q=1&r=%20")
    assert c.simulate_get("/a%20b.txt").headers["location"] == "https://alpha.example.com/a%20b.txt"
    assert c.simulate_get("/no-such-file").status_code == 301  # the sink's answer, not a path rule
    assert c.simulate_get("/../x").status_code == 404  # a path that is not canonical names nothing to redirect to
    assert c.simulate_post("/api/x", json={}).json["exc"] == "RequireSSL"
    assert c.simulate_get("/api/x").json["exc"] == "RequireSSL"  # protected: refused, never redirected
    assert c.simulate_get("/healthz").status_code == 200
    assert "location" not in c.simulate_get("/metrics").headers  # answered (here 404: not an operator's address)
    assert c.simulate_get("/", protocol="https").status_code == 200
    assert c.simulate_get("/page/x", protocol="https").json == {"name": "x"}
    proxied = c.simulate_get("/", headers={"X-Forwarded-Proto": "https"}, remote_addr="10.0.0.1")
    assert proxied.status_code == 200 and proxied.text == "<h1>hi</h1>"
    plain = c.simulate_get("/", headers={"X-Forwarded-Proto": "http"}, remote_addr="10.0.0.1")
    assert plain.status_code == 301
    forged = c.simulate_get("/", headers={"X-Forwarded-Proto": "https"}, remote_addr="192.0.2.9")
    assert forged.status_code == 301  # an untrusted peer's header is not believed
    dev = falcon.testing.TestClient(kernel_app({"bastion": {"static": str(tmp_path)}}), headers={"Host": "localhost"})
    assert dev.simulate_get("/").status_code == 200  # development serves plain HTTP


def test_forwarded_proto_believed_only_from_trusted_proxy(kernel_app):
    sections = {"bastion": {"development": False, "allowed_hosts": "localhost", "trusted_proxies": "10.0.0.0/8"}}
    c = falcon.testing.TestClient(kernel_app(sections), headers={"Host": "localhost", "X-Forwarded-Proto": "https"})
    assert c.simulate_post("/api/x", json={}, remote_addr="10.1.2.3").json["exc"] == "Unauthorized"
    assert c.simulate_post("/api/x", json={}, remote_addr="192.0.2.9").json["exc"] == "RequireSSL"


def test_production_needs_allowed_hosts(kernel_app):
    from kernel.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[bastion\] allowed_hosts"):
        kernel_app({"bastion": {"development": False}})


def test_health(client):
    result = client.simulate_get("/healthz")
    assert result.status_code == 200 and result.json == {"status": "ok", "records": "ok", "state": "ok"}


def test_health_is_503_when_storage_is_down(kernel_app):
    from kernel.core.errors import ServiceUnavailable

    app = kernel_app()

    def down():
        raise ServiceUnavailable("storage unavailable")

    app.runtime.records.ping = down
    result = falcon.testing.TestClient(app, headers={"Host": "localhost"}).simulate_get("/healthz")
    assert result.status_code == 503
    assert result.json["exc"] == "ServiceUnavailable" and result.json["retry_after"] >= 1
    assert int(result.headers["retry-after"]) == result.json["retry_after"]


class Note:
    """A model defined by a test plugin."""

    @classmethod
    def initialize(cls, record):
        record.merge(text="")

    @classmethod
    def validate(cls, record):
        from kernel.core.store import Errors

        errors = Errors()
        if not record.text.strip():
            errors.text.invalid = record.text
        return errors

    @classmethod
    def to_dict(cls, record):
        return {"id": record._id, "vsn": record._vsn, "text": record.text}


@service
def note(text: str):
    """Store a note; answer it."""
    with storage() as db:
        record = db.insert(Note, text=text)
    return Note.to_dict(record)


@service(name="notes.all")
def all_notes():
    """Every note of the domain."""
    with storage() as db:
        return [Note.to_dict(r) for r in db.select(Note)]


@service
def not_json():
    """Return something JSON cannot say."""
    return {"tags": {"a", "b"}}


@service
def explode():
    """Fail unexpectedly."""
    raise RuntimeError("secret internals /etc/passwd")


class Hello:
    def on_get(self, req, resp):
        resp.media = {"hello": current().domain}  # the request as the pipeline read it


class NotesPlugin:
    @hookimpl
    def bastion_models(self):
        return [Note]

    @hookimpl
    def bastion_services(self):
        return [note, all_notes, explode, not_json]

    @hookimpl
    def bastion_routes(self, app):
        app.add_route("/hello", Hello())


@pytest.fixture
def notes_client(kernel_app):
    def make(sections=None):
        app = kernel_app(sections, plugins=[HeaderAuth(), NotesPlugin()])
        return falcon.testing.TestClient(app, headers={"Host": "localhost", "X-Test-User": "alice"})

    return make


def test_a_test_plugin_adds_a_service_a_model_and_a_route(notes_client):
    c = notes_client()
    first = c.simulate_post("/api/note", json={"args": ["hello"]})
    assert first.status_code == 200, first.text
    assert first.json["result"]["text"] == "hello" and first.json["result"]["vsn"] == 1
    assert c.simulate_post("/api/notes.all", json={}).json["result"] == [first.json["result"]]
    assert c.simulate_get("/hello").json == {"hello": "localhost"}


def test_tenants_do_not_see_each_other(notes_client):
    c = notes_client()
    c.simulate_post("/api/note", json={"kwargs": {"text": "alpha's"}}, headers={"Host": "alpha.localhost"})
    assert c.simulate_post("/api/notes.all", headers={"Host": "beta.localhost"}).json["result"] == []
    assert len(c.simulate_post("/api/notes.all", headers={"Host": "alpha.localhost"}).json["result"]) == 1


def test_validation_error_is_422_with_fields(notes_client):
    result = notes_client().simulate_post("/api/note", json={"args": ["   "]})
    assert result.status_code == 422
    assert result.json == {"exc": "ValidationError", "err": ["invalid data"], "fields": {"text": {"invalid": "   "}}}
    assert ValidationError.status == 422


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"args": {}}', "'args'"),
    (b'{"kwargs": []}', "'kwargs'"),
    (b'{"args": [], "other": 1}', "other"),
    (b'{"args": ["a", "b"]}', "too many positional"),
    (b'{"kwargs": {"txt": "a"}}', "txt"),
    (b'{"args": [5]}', "'text'"),
    (b'{"args": [NaN]}', "malformed JSON"),
    (b'{"args": [], "args": ["x"]}', "duplicate"),
    (b"\xff\xfe", "malformed JSON"),
])
def test_arguments_that_do_not_bind_are_400(notes_client, body, needle):
    result = notes_client().simulate_post("/api/note", body=body, headers={"Content-Type": "application/json"})
    assert result.status_code == 400, result.text
    assert result.json["exc"] == "InvalidCall"
    assert needle in " ".join(result.json["err"])


def test_unknown_service_is_404_after_authentication(notes_client):
    c = notes_client()
    assert c.simulate_post("/api/nope", json={}).json["exc"] == "NotFound"
    assert c.simulate_post("/api/nope", json={}, headers={"X-Test-User": ""}).json["exc"] == "Unauthorized"


def test_permission_hook_denies(kernel_app):
    class Deny:
        @hookimpl
        def bastion_has_permission(self, session, service):
            return service != "note"

    app = kernel_app(plugins=[HeaderAuth(), NotesPlugin(), Deny()])
    c = falcon.testing.TestClient(app, headers={"Host": "localhost", "X-Test-User": "bob"})
    assert c.simulate_post("/api/note", json={"args": ["x"]}).status_code == 403
    assert c.simulate_post("/api/notes.all").status_code == 200
    assert c.simulate_post("/api/unknown").json["exc"] == "NotFound"


def test_500_says_nothing_outside_development(notes_client, caplog):
    result = notes_client({"bastion": {"development": False, "allowed_hosts": "localhost"}}).simulate_post(
        "/api/explode", protocol="https")
    assert result.status_code == 500
    assert set(result.json) == {"exc", "err", "request_id"} and result.json["exc"] == "Error"
    assert "secret" not in result.text and "passwd" not in result.text and "Traceback" not in result.text
    request_id = result.json["request_id"]
    assert result.json["err"] == [f"internal error; request id {request_id}"]
    assert result.headers["X-Request-Id"] == request_id
    assert request_id in caplog.text and "secret internals" in caplog.text


def test_500_has_a_trace_in_development(notes_client):
    result = notes_client().simulate_post("/api/explode")
    assert result.status_code == 500 and "RuntimeError" in result.json["trace"]


def test_refused_hook_sees_protocol_errors(kernel_app):
    seen = []

    class Watch:
        @hookimpl
        def bastion_refused(self, request, error):
            seen.append((request.origin, error.exc))

    c = falcon.testing.TestClient(kernel_app(plugins=[Watch()]), headers={"Host": "localhost"})
    c.simulate_post("/api/x", remote_addr="192.0.2.7")
    c.simulate_get("/healthz")
    assert seen == [("192.0.2.7", "Unauthorized")]


def test_signed_path_without_a_raw_target_is_re_encoded():
    from kernel.core.errors import NotFound
    from kernel.http.target import parse_target

    assert parse_target({"SCRIPT_NAME": "", "PATH_INFO": "/api/a b\xc3\xa9"}).path == "/api/a%20b%C3%A9"
    assert parse_target({"RAW_URI": "/api/add?x=1", "PATH_INFO": "/api/add"}).path == "/api/add"
    # An escaped unreserved character is not the canonical form of the path: refused, not re-read.
    with pytest.raises(NotFound):
        parse_target({"RAW_URI": "/api/%61dd?x=1", "PATH_INFO": "/api/add"})


def test_a_result_that_is_not_json_is_a_500_that_says_nothing(notes_client):
    result = notes_client({"bastion": {"development": False, "allowed_hosts": "localhost"}}).simulate_post(
        "/api/not_json", protocol="https")
    assert result.status_code == 500
    assert set(result.json) == {"exc", "err", "request_id"} and result.json["exc"] == "Error"
    assert "set" not in result.text


# -- roles: they come with the authentication ----------------------------------------------------------------------

@service
def my_roles() -> list:
    """The caller's roles, read twice, as a service and a permission check may."""
    assert current().roles == current().roles
    return sorted(current().roles)


class RolesPlugin:
    @hookimpl
    def bastion_services(self):
        return [my_roles]


class SignedRolesAuth:
    """A toy authenticator answering an ``Authentication`` whose roles ``X-Test-Roles`` names (no MAC checked)."""

    @hookimpl
    def bastion_authenticate(self, request, credentials):
        from kernel import Authentication

        from .conftest import Caller

        named = request.header("X-Test-Roles")
        return Authentication(Caller("alice"), b"k" * 32, roles=frozenset(named.split(",")) if named else None)


class CountedRoles:
    """A session that keeps its roles itself, counting how often they are read."""

    reads = 0

    def __init__(self, username: str):
        self.username = username

    @property
    def roles(self):
        CountedRoles.reads += 1
        return ("viewer",)


class SessionRolesAuth:
    @hookimpl
    def bastion_authenticate(self, request, service):
        return CountedRoles("bob")


def test_the_roles_of_the_authentication_are_the_requests_and_reading_them_reads_nothing(kernel_app):
    from kernel.core.signing import authorization, new_nonce, response_mac

    app = kernel_app(plugins=[SignedRolesAuth(), RolesPlugin()])
    nonce = new_nonce()
    header = authorization("s" * 22, "1", nonce, "m" * 43)
    c = falcon.testing.TestClient(app, headers={"Host": "localhost", "Authorization": header})
    result = c.simulate_post("/api/my_roles", headers={"X-Test-Roles": "editor,admin"})
    assert result.json == {"result": ["admin", "editor"]}
    assert result.headers["server-authorization"] == f'Bastion-HMAC mac="{response_mac(b"k" * 32, nonce, 200, result.content)}"'
    # None: the authenticator read none, and its session has no roles attribute: no roles.
    assert c.simulate_post("/api/my_roles").json == {"result": []}


def test_an_authenticator_that_reads_no_roles_may_keep_them_on_its_session_read_once(kernel_app):
    c = falcon.testing.TestClient(kernel_app(plugins=[SessionRolesAuth(), RolesPlugin()]), headers={"Host": "localhost"})
    CountedRoles.reads = 0
    assert c.simulate_post("/api/my_roles").json == {"result": ["viewer"]}
    assert CountedRoles.reads == 1  # at authentication; current().roles then reads the request's field
    # A session without roles (the conftest's Caller) gives none.
    app = kernel_app(plugins=[HeaderAuth(), RolesPlugin()])
    plain = falcon.testing.TestClient(app, headers={"Host": "localhost", "X-Test-User": "carol"})
    assert plain.simulate_post("/api/my_roles").json == {"result": []}


# -- headers an error's body implies: Retry-After equal to retry_after, WWW-Authenticate on every 401 ---------------

class Refusing:
    """Services that refuse with a retry_after, one of them whose body was changed after it was raised."""

    @hookimpl
    def bastion_services(self):
        from kernel.core.errors import Abusive, AccountLocked, BastionError, ServiceUnavailable

        @service
        def abusive() -> None:
            raise Abusive("slow down", retry_after=2.2)

        @service
        def locked() -> None:
            raise AccountLocked("locked", retry_after=299.01)

        @service
        def unavailable() -> None:
            raise ServiceUnavailable("down")

        @service
        def rewritten() -> None:
            error = ServiceUnavailable("down", retry_after=5)
            error.extra["retry_after"] = 9  # whatever changes the body, the header follows it
            raise error

        class Custom(BastionError):
            status = 429

        @service
        def custom() -> None:
            raise Custom("a plugin's own error", retry_after=4)

        return [abusive, locked, unavailable, rewritten, custom]


@pytest.mark.parametrize("name, seconds", [("abusive", 3), ("locked", 300), ("unavailable", 5), ("rewritten", 9),
                                           ("custom", 4)])
def test_retry_after_in_the_header_always_equals_the_bodys(kernel_app, name, seconds):
    app = kernel_app(plugins=[HeaderAuth(), Refusing()])
    c = falcon.testing.TestClient(app, headers={"Host": "localhost", "X-Test-User": "alice"})
    result = c.simulate_post(f"/api/{name}")
    assert result.json["retry_after"] == seconds
    assert result.headers["retry-after"] == str(seconds)


def test_an_error_without_retry_after_has_no_retry_after_header(client):
    assert "retry-after" not in client.simulate_get("/no/such/thing").headers


def test_every_401_names_the_scheme_in_www_authenticate(client):
    """RFC 9110, section 11.6.1: a 401 carries a challenge; Bastion's names the scheme of section 4."""
    result = client.simulate_post("/api/anything", json={})
    assert result.status_code == 401
    assert result.headers["www-authenticate"] == "Bastion-HMAC"
    assert "www-authenticate" not in client.simulate_get("/no/such/thing").headers
