"""Operability on real gunicorn servers (2 workers): logging from the INI, call lines, request ids, metrics, health.

The security events and the admin commands are the auth plugin's
(``plugins/auth/tests/test_security_log.py``, ``test_admin.py``); this module
is the kernel's side: what every request gets, whatever the plugins.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import resource
from pathlib import Path

import pytest

from kernel.client import Client
from kernel.testing import GunicornServer, RedisServer

from .e2e_support import DOMAIN, PASSWORD, USERNAME, children, freeze_call, poll_until, raw_request, sections

TIME_LEVEL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def get(server: GunicornServer, path: str, host: str | None = DOMAIN, headers: dict | None = None):
    all_headers = dict(headers or {})
    if host is not None:
        all_headers["Host"] = host
    return raw_request(server.host, server.port, "GET", path, b"", all_headers)


def log_lines(server: GunicornServer) -> list[str]:
    return server.log().splitlines()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for_log(server_or_path, predicate, what: str) -> list[str]:
    """Poll a server's log (or a log file) until a line matches: the lines are written after the answer is sent."""
    def lines():
        if isinstance(server_or_path, Path):
            return server_or_path.read_text().splitlines() if server_or_path.exists() else []
        return log_lines(server_or_path)

    poll_until(lambda: any(predicate(line) for line in lines()), 15, what)
    return lines()


def two_workers_serving(server: GunicornServer) -> None:
    """Both workers have booted: gunicorn says so for each."""
    poll_until(lambda: server.log().count("Booting worker") >= 2, 30, "two workers booted")


def both_workers_counted(server: GunicornServer, folder: Path) -> None:
    """Health probes on new connections until both workers have answered one (each makes its own metrics files)."""
    workers = children(server.process.pid)
    poll_until(lambda: get(server, "/healthz").status == 200 and
               {int(p.rsplit("_", 1)[1][:-3]) for p in glob.glob(f"{folder}/counter_*.db")} >= workers,
               30, "both workers counted something")


# -- 1. logging from the INI ---------------------------------------------------------------------------------------


def test_default_lines_are_one_per_event_on_stderr_with_time_and_level(gunicorn_server):
    server = gunicorn_server(sections("mem://"), workers=1)
    client = Client(server.url, host=DOMAIN)
    client.login(USERNAME, PASSWORD)
    client.call("add", "milk")
    lines = wait_for_log(server, lambda line: "path=/api/add" in line, "the call line of add")
    assert lines, "nothing logged"
    # gunicorn's own messages come through the same handler and format
    assert any(TIME_LEVEL.match(line) and "gunicorn.error Booting worker" in line for line in lines)
    assert all(TIME_LEVEL.match(line) for line in lines), [line for line in lines if not TIME_LEVEL.match(line)]
    [add] = [line for line in lines if "bastion.call" in line and "path=/api/add" in line]
    assert re.search(r"INFO bastion\.call event=call request_id=[0-9a-f]{16} domain=localhost origin=127\.0\.0\.1 "
                     r"method=POST path=/api/add service=add user=alice status=200 duration_ms=[0-9.]+$", add), add


def test_log_format_json_makes_every_line_one_object_gunicorn_included(gunicorn_server):
    server = gunicorn_server(sections("mem://", bastion={"log_format": "json"}), workers=1)
    client = Client(server.url, host=DOMAIN)
    client.login(USERNAME, PASSWORD)
    client.call("add", "milk")
    with pytest.raises(Exception, match="no such service"):
        client.call("nope")
    wait_for_log(server, lambda line: '"path":"/api/nope"' in line, "the call line of nope")
    records = json_lines(server.log())
    assert any(r["logger"] == "gunicorn.error" and r["message"].startswith("Booting worker") for r in records)
    assert all({"time", "level", "logger"} <= set(r) for r in records)
    calls = [r for r in records if r["logger"] == "bastion.call"]
    [add] = [r for r in calls if r["path"] == "/api/add"]
    assert list(add) == ["time", "level", "logger", "event", "request_id", "domain", "origin", "method", "path",
                         "service", "user", "status", "duration_ms"]
    assert add["event"] == "call" and add["status"] == 200 and add["user"] == "alice" and add["service"] == "add"
    [nope] = [r for r in calls if r["path"] == "/api/nope"]
    assert nope["status"] == 404 and nope["exc"] == "NotFound" and nope["service"] == "nope"
    [login] = [r for r in calls if r["path"] == "/auth/login"]
    assert "service" not in login and "user" not in login and login["status"] == 200


LOGGING_SECTIONS = {
    "loggers": {"keys": "root, call"},
    "handlers": {"keys": "file"},
    "formatters": {"keys": "plain"},
    "logger_root": {"level": "INFO", "handlers": "file"},
    # bastion.call at WARNING: the successful calls (INFO) are left out, the refusals the worker answers are kept
    "logger_call": {"level": "WARNING", "handlers": "", "qualname": "bastion.call"},
    "handler_file": {"class": "FileHandler", "args": "('%(here)s/app.log', 'a')", "formatter": "plain"},
    "formatter_plain": {"format": "%(levelname)s %(name)s [%(request_id)s] %(message)s"},
}


def test_logging_sections_follow_fileconfig_for_gunicorn_and_bastion(gunicorn_server):
    server = gunicorn_server(sections("mem://", **LOGGING_SECTIONS), workers=1)
    logfile = Path(server.log_path).parent / "app.log"  # %(here)s: the INI file's folder
    answer = raw_request(server.host, server.port, "POST", "/auth/login",
                         b'{"username": "alice", "password": "wrong password"}',
                         {"Host": DOMAIN, "Content-Type": "application/json"})
    assert answer.status == 401
    request_id = answer.headers["x-request-id"]
    lines = wait_for_log(logfile, lambda line: "login_failed" in line, "the login_failed line")
    assert "INFO gunicorn.error [-] Booting worker with pid" in "\n".join(lines)
    # one format for everything, the request's id in every line it made
    assert f"WARNING bastion.security [{request_id}] event=login_failed request_id={request_id} domain=localhost" \
           in "\n".join(lines)
    assert not any("bastion.call" in line for line in lines)  # below the level the file gives bastion.call
    assert server.log().count("Booting worker") == 0  # nothing on stderr any more: the file has it


def test_logging_sections_that_fileconfig_cannot_use_stop_the_start_with_one_line(tmp_path):
    broken = dict(LOGGING_SECTIONS, handler_file={"class": "NoSuchHandler", "args": "()", "formatter": "plain"})
    server = GunicornServer(sections("mem://", **broken), startup_timeout=30)
    with pytest.raises(RuntimeError) as failure:
        server.start()
    server.close()
    assert "bastion: <" not in str(failure.value)
    assert re.search(r"bastion: \S+bastion\.ini: logging sections: \w+Error: .*NoSuchHandler", str(failure.value))


def test_log_level_beside_logging_sections_is_refused(tmp_path):
    from kernel.testing import main

    ini = tmp_path / "bastion.ini"
    text = "[bastion]\ndevelopment = true\nlog_level = debug\n\n[loggers]\nkeys = root\n[handlers]\nkeys =\n" \
           "[formatters]\nkeys =\n[logger_root]\nhandlers =\n"
    ini.write_text(text)
    assert main(["--config", str(ini), "check"]) == 1


def test_bastion_trace_plugins_writes_every_hook_call(gunicorn_server):
    server = gunicorn_server(sections("mem://"), workers=1, env={"BASTION_TRACE_PLUGINS": "1"})
    client = Client(server.url, host=DOMAIN)
    client.login(USERNAME, PASSWORD)
    client.call("get_all")
    lines = wait_for_log(server, lambda line: "bastion_authenticate" in line, "a traced bastion_authenticate")
    traced = [line for line in lines if "DEBUG bastion.plugins" in line]
    assert any("bastion_startup" in line for line in traced) and any("bastion_has_permission" in line for line in traced)
    text = server.log()
    assert client.session.sid not in text and "mac=" not in text  # reprs say who, never the secrets


FORGED = "1999-01-01T00:00:00.000Z INFO bastion.security event=login domain=localhost user=admin"


def test_client_text_in_traced_hook_calls_cannot_forge_a_line(gunicorn_server):
    """Hook arguments carry client text (a login body's key, a path); traced, none of it starts a line."""
    server = gunicorn_server(sections("mem://"), workers=1, env={"BASTION_TRACE_PLUGINS": "1"})
    headers = {"Host": DOMAIN, "Content-Type": "application/json"}
    for brk in ("\n", "\r", "\u2028", "\u0085", "\u2029"):
        body = json.dumps({"username": "x", "password": "y", f"{brk}{FORGED}{brk}": 1}).encode()
        assert raw_request(server.host, server.port, "POST", "/auth/login", body, headers).status == 400
        path = "/api/" + "".join(f"%{b:02X}" for b in f"add{brk}{FORGED}".encode())
        assert raw_request(server.host, server.port, "POST", path, b"{}", headers).status in (400, 401, 404)
    lines = wait_for_log(server, lambda line: "bastion_refused" in line, "a traced bastion_refused")
    forged = [line for line in server.log().splitlines() if FORGED in line]
    assert forged, "the client's text is logged (escaped, inside a line)"
    # Each is a record's own first line, the client's text inside it, never a line of its own.
    assert all(TIME_LEVEL.match(line) for line in forged), [line for line in forged if not TIME_LEVEL.match(line)][:3]
    assert all(TIME_LEVEL.match(line) or line.startswith("  ") for line in lines if line), \
        [line for line in lines if line and not TIME_LEVEL.match(line)][:3]


# -- 2. one call line per request --------------------------------------------------------------------------------


def test_static_files_and_health_are_logged_at_debug_only(gunicorn_server):
    info = gunicorn_server(sections("mem://"), workers=1)
    debug = gunicorn_server(sections("mem://", bastion={"log_level": "debug"}), workers=1)
    for server in (info, debug):
        assert get(server, "/").status == 200  # the todo UI: a static file
        assert get(server, "/healthz").status == 200
        assert get(server, "/no-such-file").status == 404
    wait_for_log(debug, lambda line: "path=/no-such-file" in line, "the 404's call line")
    wait_for_log(info, lambda line: "path=/no-such-file" in line, "the 404's call line")
    assert not any("path=/healthz" in line or "path=/ " in line for line in log_lines(info))
    assert any("DEBUG bastion.call" in line and "path=/healthz" in line for line in log_lines(debug))
    assert any("DEBUG bastion.call" in line and "path=/ " in line for line in log_lines(debug))
    # a missing file is a request for something that is not there: always logged
    assert any("INFO bastion.call" in line and "path=/no-such-file status=404 exc=NotFound" in line
               for line in log_lines(info))


# -- 4. request ids ------------------------------------------------------------------------------------------------


def test_every_answer_has_a_request_id_and_a_trusted_proxy_chooses_it(gunicorn_server):
    server = gunicorn_server(sections("mem://", bastion={"trusted_proxies": "127.0.0.1"}), workers=1)
    seen = {get(server, "/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(seen) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in seen)
    assert get(server, "/").headers["x-request-id"]  # a static file
    assert get(server, "/api/x").headers["x-request-id"]  # a refusal (405)
    assert get(server, "/", host="evil.example").headers["x-request-id"]  # refused before anything else
    # gunicorn's own refusals have one too
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.putrequest("GET", "/healthz", skip_host=True)
    conn.putheader("Host", "a")
    conn.putheader("Host", "b")
    conn.endheaders()
    refused = conn.getresponse()
    assert refused.status == 400 and re.fullmatch(r"[0-9a-f]{16}", refused.getheader("X-Request-Id"))
    conn.close()
    # the proxy's id is kept when it is a sane one, and is in the request's lines
    kept = get(server, "/no-such-file", headers={"X-Request-Id": "lb-7f3a:42"})
    assert kept.headers["x-request-id"] == "lb-7f3a:42"
    wait_for_log(server, lambda line: "request_id=lb-7f3a:42 " in line and "path=/no-such-file" in line,
                 "the proxy's request id in the call line")
    for bad in ("a" * 129, "two words", "semi;colon"):
        assert get(server, "/healthz", headers={"X-Request-Id": bad}).headers["x-request-id"] != bad


def test_a_request_id_from_a_client_that_is_no_proxy_is_replaced(gunicorn_server):
    server = gunicorn_server(sections("mem://"), workers=1)  # no trusted_proxies
    answer = get(server, "/healthz", headers={"X-Request-Id": "chosen-by-the-client"})
    assert answer.headers["x-request-id"] != "chosen-by-the-client"


# -- 5. metrics ------------------------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


def scrape(server: GunicornServer, host: str = "127.0.0.1") -> dict[tuple[str, frozenset], float]:
    answer = get(server, "/metrics", host=f"{host}:{server.port}")
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in answer.body.decode().splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_a_known_scenario_across_two_workers(gunicorn_server, tmp_path):
    folder = tmp_path / "metrics"
    store = tmp_path / "b.sqlite3"
    server = gunicorn_server(sections(f"sqlite:///{store}"), workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    two_workers_serving(server)
    workers = children(server.process.pid)
    both_workers_counted(server, folder)
    before = scrape(server)
    clients = [Client(server.url, host=DOMAIN) for _ in range(3)]
    for client in clients:
        client.login(USERNAME, PASSWORD)
    for i in range(12):
        clients[i % 3].call("add", f"todo {i}")
    for client in clients:
        client.call("get_all")
    with pytest.raises(Exception, match="no such service"):
        clients[0].call("no_such_service")
    for wrong in ("wrong one", "wrong two"):
        with pytest.raises(Exception, match="invalid username or password"):
            Client(server.url, host=DOMAIN).login(USERNAME, wrong)
    replay = freeze_call(clients[1], "get_all")
    first = raw_request(server.host, server.port, "POST", replay.path, replay.body, replay.headers)
    second = raw_request(server.host, server.port, "POST", replay.path, replay.body, replay.headers)
    assert (first.status, second.status) == (200, 401)
    clients[2].logout()
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bastion_calls_total", service="add", status="200") == 12
    assert delta("bastion_calls_total", service="get_all", status="200") == 4
    assert delta("bastion_calls_total", service="get_all", status="401") == 1
    assert delta("bastion_calls_total", service="(unknown)", status="404") == 1
    assert delta("bastion_calls_total", service="/auth/login", status="200") == 3
    assert delta("bastion_calls_total", service="/auth/login", status="401") == 2
    assert delta("bastion_calls_total", service="/auth/logout", status="200") == 1
    assert delta("bastion_call_duration_seconds_count", service="add") == 12
    assert delta("bastion_call_duration_seconds_bucket", service="add", le="+Inf") == 12
    assert delta("bastion_call_duration_seconds_sum", service="add") > 0
    assert delta("bastion_logins_total", outcome="success") == 3
    assert delta("bastion_logins_total", outcome="invalid_credential") == 2
    assert delta("bastion_security_events_total", event="login") == 3
    assert delta("bastion_security_events_total", event="login_failed") == 2
    assert delta("bastion_security_events_total", event="replayed_call") == 1
    assert delta("bastion_security_events_total", event="logout") == 1
    assert value(after, "bastion_sessions") == value(before, "bastion_sessions") + 2  # 3 logins, 1 logout
    assert delta("bastion_storage_errors_total", backend="sqlite") == 0
    # every worker wrote its share into the shared folder, and the scrape added them up
    pids = {int(p.rsplit("_", 1)[1][:-3]) for p in glob.glob(f"{folder}/*.db")}
    assert workers <= pids


def test_a_metrics_file_no_worker_could_finish_is_left_out_of_the_scrape(gunicorn_server, tmp_path):
    """A worker that meets a full disk while it makes its file leaves it empty: the scrape still answers."""
    folder = tmp_path / "metrics"
    server = gunicorn_server(sections(f"sqlite:///{tmp_path / 'b.sqlite3'}"), workers=2,
                             env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    two_workers_serving(server)
    (folder / "histogram_999999.db").touch()  # what a full disk leaves of a new file
    for _ in range(3):
        assert get(server, "/healthz").status == 200
    samples = scrape(server)
    assert value(samples, "bastion_calls_total", service="/healthz", status="200") >= 3
    wait_for_log(server, lambda line: "metrics file histogram_999999.db left out of this scrape" in line,
                 "the scrape said which file it left out")


def test_metrics_survive_a_worker_restart(gunicorn_server, tmp_path):
    server = gunicorn_server(sections("sqlite:///" + str(tmp_path / "b.sqlite3")), workers=2)
    two_workers_serving(server)
    client = Client(server.url, host=DOMAIN)
    client.login(USERNAME, PASSWORD)
    for i in range(5):
        client.call("add", str(i))
    counted = value(scrape(server), "bastion_calls_total", service="add", status="200")
    assert counted == 5
    for pid in children(server.process.pid):
        os.kill(pid, 15)  # gunicorn starts new workers: the counts of the old ones stay in their files
    poll_until(lambda: server.log().count("Booting worker") >= 4, 30, "new workers")
    poll_until(lambda: get(server, "/healthz").status == 200, 30, "serving again")
    assert value(scrape(server), "bastion_calls_total", service="add", status="200") == 5


def test_metrics_are_only_for_the_allowed_addresses_and_need_no_tenant(gunicorn_server):
    open_to_loopback = gunicorn_server(sections("mem://"), workers=1)
    assert get(open_to_loopback, "/metrics", host="10.1.2.3:9000").status == 200  # any Host: no tenant check
    assert get(open_to_loopback, "/metrics", host=None).status == 200
    # forwarded by a proxy nobody declared: whoever sent it is unknown
    assert get(open_to_loopback, "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status == 404
    proxied = gunicorn_server(sections("mem://", bastion={"trusted_proxies": "127.0.0.1"}), workers=1)
    assert get(proxied, "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status == 404  # the client's address
    assert get(proxied, "/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status == 200
    elsewhere = gunicorn_server(sections("mem://", metrics={"allow": "192.0.2.10"}), workers=1)
    answer = get(elsewhere, "/metrics")
    assert answer.status == 404 and json.loads(answer.body)["exc"] == "NotFound"
    assert get(elsewhere, "/metrics", host="10.1.2.3").status == 400  # an ordinary request: the tenant check
    nobody = gunicorn_server(sections("mem://", metrics={"allow": ""}), workers=1)
    assert get(nobody, "/metrics").status == 404


# -- 6. health --------------------------------------------------------------------------------------------------------


def test_health_answers_any_host_from_the_allowed_addresses_only(gunicorn_server):
    server = gunicorn_server(sections("mem://"), workers=1)
    answer = get(server, "/healthz", host="10.0.0.7:9000")  # a load balancer probing by address
    assert answer.status == 200 and json.loads(answer.body) == {"status": "ok", "records": "ok", "state": "ok"}
    assert get(server, "/healthz", host="10.0.0.7", headers={"X-Forwarded-For": "198.51.100.1"}).status == 400
    strict = gunicorn_server(sections("mem://", metrics={"allow": "192.0.2.10"}), workers=1)
    assert get(strict, "/healthz", host="10.0.0.7").status == 400  # InvalidHost, as any request
    assert get(strict, "/healthz").status == 200  # an allowed host still gets it


def test_health_is_503_when_the_disk_is_full(gunicorn_server, tmp_path):
    store, folder = tmp_path / "b.sqlite3", tmp_path / "metrics"
    server = gunicorn_server(sections(f"sqlite:///{store}"), workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    two_workers_serving(server)
    both_workers_counted(server, folder)  # their metrics files exist before the disk is full: they count the errors
    workers = children(server.process.pid)
    limits = {pid: resource.prlimit(pid, resource.RLIMIT_FSIZE) for pid in workers}
    try:
        for pid in workers:  # no worker may write past the first byte of any file: a full disk
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, limits[pid][1]))
        for _ in range(4):
            answer = get(server, "/healthz")
            assert answer.status == 503, answer.body
            body = json.loads(answer.body)
            assert body["exc"] == "ServiceUnavailable" and body["records"] == body["state"] == "unavailable"
            assert answer.headers["retry-after"] == str(body["retry_after"])
    finally:
        for pid, limit in limits.items():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limit)
    assert get(server, "/healthz").status == 200
    assert value(scrape(server), "bastion_storage_errors_total", backend="sqlite") >= 4


def test_health_reports_records_and_state_apart_when_redis_cannot_write(gunicorn_server, tmp_path):
    with RedisServer() as redis:
        server = gunicorn_server(sections(f"sqlite:///{tmp_path / 'b.sqlite3'}", state=redis.url), workers=2)
        assert json.loads(get(server, "/healthz").body) == {"status": "ok", "records": "ok", "state": "ok"}
        import redis as redis_py

        admin = redis_py.Redis.from_url(redis.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # Redis out of memory: it answers reads, refuses writes
        try:
            answer = get(server, "/healthz")
            assert answer.status == 503
            body = json.loads(answer.body)
            assert body["records"] == "ok" and body["state"] == "unavailable" and body["exc"] == "ServiceUnavailable"
            assert set(body) == {"exc", "err", "retry_after", "records", "state"}  # and no driver detail
        finally:
            admin.config_set("maxmemory", 0)
        assert get(server, "/healthz").status == 200
        assert value(scrape(server), "bastion_storage_errors_total", backend="redis") >= 1


# -- the deployment note behind check --deploy -------------------------------------------------------------------


def test_forwarding_headers_from_an_undeclared_proxy_are_noted_for_check_deploy(gunicorn_server, tmp_path, capsys):
    from kernel.testing import main

    config = sections(f"sqlite:///{tmp_path / 'b.sqlite3'}")
    server = gunicorn_server(config, workers=2)
    assert get(server, "/", headers={"X-Forwarded-For": "198.51.100.4", "X-Forwarded-Proto": "https"}).status == 200
    wait_for_log(server, lambda line: "X-Forwarded-For, X-Forwarded-Proto arrived from 127.0.0.1" in line,
                 "the warning about forwarding headers")
    ini = Path(server.log_path).parent / "bastion.ini"
    assert main(["--config", str(ini), "check", "--deploy"]) == 1
    out = capsys.readouterr().out
    assert "error   bastion.E006: X-Forwarded-For, X-Forwarded-Proto arrive (last from 127.0.0.1)" in out
