"""kernel.testing.launched: a fixture's server that cannot start fails the test, one that runs is stopped after."""

from __future__ import annotations

import pytest

from kernel.testing import RedisServer, RedisServerError, launched


def test_a_server_that_cannot_start_fails_the_test_with_what_and_why(tmp_path):
    missing = tmp_path / "no-redis-server"
    with pytest.raises(pytest.fail.Exception) as failed:
        with launched(RedisServer(binary=str(missing)), "redis-server for this test"):
            pytest.fail("the block ran without a server")  # pragma: no cover - what the test guards against
    assert str(failed.value).startswith("cannot start redis-server for this test: ")


def test_the_server_runs_inside_the_block_and_is_stopped_after():
    with launched(RedisServer(), "redis-server") as server:
        assert server.process is not None and server.process.poll() is None
        process = server.process
    assert process.poll() is not None


def test_an_error_once_the_server_runs_is_the_blocks_own():
    with pytest.raises(RedisServerError, match="raised by the block"):
        with launched(RedisServer(), "redis-server"):
            raise RedisServerError("raised by the block")
