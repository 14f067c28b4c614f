"""The Redis plugin's part of `bastion check --deploy`: read from the URLs alone, no server reached."""

from bastion_storage_redis import deploy

from kernel import Config


def problems(storage: str, state: str = "") -> dict[str, str]:
    config = Config.from_dict({"bastion": {"storage": storage, "state": state}})
    return {p.id: p.message for p in deploy.problems(config.for_plugin("test").storage_urls)}


def test_a_remote_redis_without_a_password_is_an_error_and_plain_tcp_a_warning():
    found = problems("sqlite:///var/b.sqlite3", "redis://cache.internal:6379/0")
    assert set(found) == {"redis.E001", "redis.W002"}
    assert found["redis.E001"].startswith("[bastion] state = redis://cache.internal:6379/0: Redis on cache.internal")
    found = problems("redis://:hunter2@cache.internal:6379/0")
    assert set(found) == {"redis.W002"} and "hunter2" not in found["redis.W002"]
    assert problems("rediss://:hunter2@cache.internal:6380/0") == {}


def test_a_local_redis_or_a_unix_socket_is_fine():
    for url in ("redis://127.0.0.1:6379/0", "redis://localhost/0", "unix:///run/redis.sock?db=0"):
        assert problems(url) == {}, url


def test_a_cluster_url_is_judged_by_its_nodes():
    found = problems("redis+cluster://10.0.0.1:7000,10.0.0.2:7000/0")
    assert set(found) == {"redis.E001", "redis.W002"} and "10.0.0.1, 10.0.0.2" in found["redis.E001"]
    assert problems("rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000") == {}
    assert problems("redis+cluster://127.0.0.1:7000,127.0.0.1:7001") == {}
