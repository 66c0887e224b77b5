"""The test Redis fixtures: both backends run Lua, the real one is our own server."""

from __future__ import annotations

import pytest
import redis as redis_py

from tests.support.redis_server import (
    RedisServer,
    RedisServerError,
    _ephemeral_range,
    free_port,
)

ADD_SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[1], ARGV[2])"


def test_both_backends_evaluate_a_lua_script(redis: redis_py.Redis) -> None:
    assert redis.eval(ADD_SCRIPT, 1, "k", "40", "2") == 42
    assert redis.get("k") == b"42"


def test_registered_script_survives_script_flush(redis: redis_py.Redis) -> None:
    script = redis.register_script("return ARGV[1]")
    assert script(args=["x"]) == b"x"
    redis.script_flush()
    assert script(args=["y"]) == b"y"


def test_real_server_is_not_the_shared_one(
    redis_server: RedisServer, real_redis: redis_py.Redis
) -> None:
    assert redis_server.port != 6379
    assert real_redis.connection_pool.connection_kwargs["port"] == redis_server.port
    assert real_redis.connection_pool.connection_kwargs["port"] != 6379


def test_each_test_starts_with_an_empty_database(redis: redis_py.Redis) -> None:
    assert redis.dbsize() == 0
    redis.set("leftover", "1")


def test_restart_keeps_the_port() -> None:
    with RedisServer() as server:
        port = server.port
        server.restart()
        assert server.port == port
        client = redis_py.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()


def test_a_server_whose_port_is_taken_is_never_mistaken_for_the_one_holding_it(
    redis_server: RedisServer,
) -> None:
    # stop 24's CI: two cluster nodes were handed one port; the second's PING reached the
    # first, its start "succeeded", and the cluster formed with five nodes
    clash = RedisServer(port=redis_server.port)
    try:
        with pytest.raises(RedisServerError, match="Address already in use"):
            clash.start()
    finally:
        clash.close()


def test_free_ports_are_never_handed_out_twice_nor_from_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not any(low <= p <= high for p in ports)


def test_a_first_start_on_a_taken_port_moves_to_a_free_one(redis_server: RedisServer) -> None:
    server = RedisServer()
    server.port = redis_server.port  # as if another process bound it since our look
    try:
        server.start()
        assert server.port != redis_server.port
        client = redis_py.Redis.from_url(server.url)
        try:
            assert client.info("server")["process_id"] == server._proc.pid  # type: ignore[union-attr]
        finally:
            client.close()
    finally:
        server.close()
