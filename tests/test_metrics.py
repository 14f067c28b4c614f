"""Metrics never cost an answer: a value that cannot be recorded is lost, and said so, once."""

from __future__ import annotations

import errno
import logging

import falcon.testing


class FileTooLarge:
    """A metric whose values cannot be recorded, as a multiprocess file that cannot grow."""

    def labels(self, *values):
        raise OSError(errno.EFBIG, "File too large")

    def inc(self, amount=1):
        raise OSError(errno.EFBIG, "File too large")

    def observe(self, value):
        raise OSError(errno.EFBIG, "File too large")


def test_a_value_that_cannot_be_recorded_is_lost_not_the_answer(make_app, caplog, monkeypatch):
    import kernel.ops.metrics

    monkeypatch.setattr(kernel.ops.metrics, "_lost", 0)  # this process has lost none yet
    app = make_app()
    metrics = app.runtime.metrics
    assert metrics.enabled
    for metric in (metrics.calls, metrics.duration, metrics.security_events, metrics.storage_errors):
        metric._metric, metric._children = FileTooLarge(), {}
    client = falcon.testing.TestClient(app, headers={"Host": "localhost"})
    with caplog.at_level(logging.DEBUG, logger="bastion.metrics"):
        answers = [client.simulate_get("/healthz") for _ in range(3)]
        wrong = client.simulate_post("/auth/login", json={"username": "nobody", "password": "not it"})
        metrics.storage_error("sqlite")
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert wrong.status_code == 401 and wrong.json["exc"] == "InvalidCredential"
    lost = [record for record in caplog.records if record.name == "bastion.metrics"]
    assert lost and "could not be recorded (OSError: [Errno 27] File too large)" in lost[0].getMessage()
    assert [record.levelno for record in lost] == [logging.WARNING] + [logging.DEBUG] * (len(lost) - 1)
    assert len(lost) >= 5  # three health probes, a failed login (its call, its counters), the storage error
