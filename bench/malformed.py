"""What a malformed request costs the server, next to a 404: ``python -m bench.malformed [--rounds N]``.

Each request goes through the WSGI app in process (no sockets, no gunicorn:
the work the application does, which is what a body can make larger), with
the auth plugin and its default argon2 parameters, bans and locks off so that
every request is answered the same way each time. The figure is the median
CPU time of the thread per request (``time.thread_time``), over ``rounds``
requests, and its ratio to a 404's: docs/security.md, "Malformed bodies",
quotes a run and the target (a small multiple of a 404; a failed login's
argon2 is the budget the login limits are sized for).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

#: The review's body: 349,522 empty arrays as a username, 1 MiB in all.
REVIEW_ARRAYS = 349_522


def bodies(login_limit: int) -> list[tuple[str, str, str, bytes]]:
    """(name, method, path, body) of every request measured; the malformed login bodies are as large as a login
    body may be (``login_limit``), the largest a client without a session can make the server read."""

    def fit(head: bytes, unit: bytes, tail: bytes, size: int = login_limit) -> bytes:
        return head + b",".join([unit] * ((size - len(head) - len(tail)) // (len(unit) + 1))) + tail

    review = b'{"username": [' + b",".join([b"[]"] * REVIEW_ARRAYS) + b'], "password": "x"}'
    return [
        ("404", "GET", "/nothing", b""),
        ("/healthz", "GET", "/healthz", b""),
        ("login: the review's 1 MiB body", "POST", "/auth/login", review),
        ("login: the review's body at the login limit", "POST", "/auth/login",
         fit(b'{"username": [', b"[]", b'], "password": "x"}')),
        ("login: 65 levels deep, at the limit", "POST", "/auth/login",
         b'{"username": ' + b"[" * 65 + b"]" * 65 + b', "password": "' + b"[" * (login_limit - 200) + b'"}'),
        ("login: a flat object of many keys", "POST", "/auth/login", fit(b'{"a":1', b'"k0000000":1', b"}")),
        ("login: many surrogate pairs, one lone", "POST", "/auth/login",
         fit(b'{"username": "u", "password": "', b"\\ud83d\\ude00", b'\\ud800"}').replace(b",", b"")),
        ("login: not JSON", "POST", "/auth/login", b"{" * (login_limit - 1)),
        ("login: a wrong password (argon2)", "POST", "/auth/login",
         json.dumps({"username": "alice", "password": "wrong password"}).encode()),
        ("call: 1 MiB of arrays, unknown session", "POST", "/api/get_all",
         fit(b'{"args": [', b"[]", b"]}", 1024 * 1024 - 64)),
    ]


def sample(app, method: str, path: str, body: bytes) -> tuple[float, int]:
    """The thread CPU time of one request (ms) and the status it answered."""
    import falcon.testing

    headers = {"Content-Type": "application/json"} if body else {}
    if path.startswith("/api/"):
        headers["Authorization"] = ('Bastion-HMAC sid="' + "A" * 32 + '", ts="1", nonce="' + "B" * 22
                                    + '", mac="' + "C" * 43 + '"')
    started = time.thread_time()
    result = falcon.testing.simulate_request(app, method, path, body=body, headers=headers, host="localhost")
    return (time.thread_time() - started) * 1000, result.status_code


def measure(app, request, baseline, rounds: int) -> tuple[float, float, int]:
    """Medians of the request and of the 404 baseline, sampled in turn (baseline, request, baseline, ...), so that
    load on the machine hits both alike; and the request's status."""
    times, base = [], []
    status = 0
    for _ in range(rounds):
        base.append(sample(app, *baseline[1:])[0])
        ms, status = sample(app, *request[1:])
        times.append(ms)
    return statistics.median(times), statistics.median(base), status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.malformed", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="requests per figure (default 30)")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the call lines cost the same for every request: leave them out
    from bastion_auth.passwords import argon2_context
    from bastion_auth.plugin import get_auth

    from kernel.testing.apps import open_app

    users = {"alice@localhost": argon2_context().hash("correct horse battery")}
    app = open_app({"auth": {"abuse_max": 0, "account_max_failures": 0}, "users": users},
                   only=["storage_mem", "auth", "todo"])
    try:
        rows = []
        requests = bodies(get_auth(app.runtime).login_max_body)
        for _name, method, path, body in requests:  # warm every path up first: the first request of a kind pays more
            sample(app, method, path, body)
        baseline = requests[0]
        for request in requests:
            rounds = max(3, args.rounds // 10) if "argon2" in request[0] else args.rounds
            ms, base, status = measure(app, request, baseline, rounds)
            rows.append((request[0], len(request[3]), status, ms, base))
    finally:
        app.runtime.close()
    print("| request | body (bytes) | status | server CPU (ms) | × a 404 (interleaved) |")
    print("|---|---:|---:|---:|---:|")
    for name, size, status, ms, base in rows:
        print(f"| {name} | {size:,} | {status} | {ms:.3f} | {ms / base:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
