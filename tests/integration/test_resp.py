"""The hand-packed send of ``batcher.resp`` (the enqueue path), on fakeredis and a real server."""

from __future__ import annotations

import pytest
import redis as redis_py

from batcher import resp
from tests.support.builders import T0, entry, make_scripts
from tests.support.invariants import assert_consistent


def test_pack_is_the_resp_array_redis_py_sends() -> None:
    args = ["EVALSHA", "é", b"\x00\r\nraw", "", b""]
    encoder = redis_py.connection.Encoder("utf-8", "strict", decode_responses=False)
    expected = b"".join(redis_py.connection.PythonRespSerializer(6000, encoder.encode).pack(*args))
    assert resp.pack(args) == expected
    assert resp.pack(["PING"]) == b"*1\r\n$4\r\nPING\r\n"


def test_execute_packed_returns_replies_and_raises_server_errors(redis: redis_py.Redis) -> None:
    assert resp.execute_packed(redis, resp.pack(["SET", "k", "\x00é\r\n"])) == b"OK"
    assert redis.get("k") == "\x00é\r\n".encode()
    with pytest.raises(redis_py.ResponseError, match="wrong number of arguments"):
        resp.execute_packed(redis, resp.pack(["GET"]))
    assert redis.ping()  # the error reply was read whole: the pooled connection is clean


def test_execute_packed_on_a_single_connection_client(redis_url: str) -> None:
    client = redis_py.Redis.from_url(redis_url, single_connection_client=True)
    try:
        assert resp.execute_packed(client, resp.pack(["ECHO", "one"])) == b"one"
        assert client.echo("two") == b"two"  # the same connection, in step
    finally:
        client.close()


def test_a_timed_out_call_never_leaves_its_late_reply_for_the_next(redis_url: str) -> None:
    client = redis_py.Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        with pytest.raises(redis_py.TimeoutError):
            resp.execute_packed(client, resp.pack(["BLPOP", "never", "1"]))
        # the BLPOP's nil arrives after 1 s; a connection handed back half-read would give
        # it to this call instead of PONG
        assert resp.execute_packed(client, resp.pack(["PING"])) == b"PONG"
        assert resp.execute_packed(client, resp.pack(["ECHO", "x"])) == b"x"
    finally:
        client.close()


def test_enqueue_refuses_a_frame_the_script_could_misread(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    bad_id = ("a\nb", 0, b"{}")
    with pytest.raises(ValueError, match="unframeable"):
        s.enqueue([entry("ok"), bad_id], now_ms=T0)
    with pytest.raises(ValueError, match="unframeable"):
        s.enqueue([("c", 3, b"{}")], now_ms=T0)
    assert redis.zcard(s.keys.pending) == 0  # refused before anything was sent
    assert_consistent(redis, s.keys)


def test_the_script_checks_its_id_lines_against_its_envelopes(redis: redis_py.Redis) -> None:
    # a caller that bypasses Scripts.enqueue and sends one envelope too many writes nothing
    s = make_scripts(redis)
    s.preload()
    k = s.keys
    keys = [k.pending, k.seen, k.state, k.wakeup, k.stats, k.delayed, *k.actives(),
            k.source_prefix]
    fixed = [str(T0), "100", "1000000", "10", "0.8", "0", "1000", "1000", "1000", "0", "0", "0",
             k.payloads]
    sha = s._scripts["enqueue"].sha
    with pytest.raises(redis_py.ResponseError, match="1 id lines for 2 envelopes"):
        redis.evalsha(sha, len(keys), *keys, *fixed, b"a\n0\n", b"{}", b"{}")
    assert redis.zcard(k.pending) == 0 and redis.hlen(k.payloads) == 0
    assert_consistent(redis, s.keys)


def test_execute_packed_then_wait_reads_both_replies_even_after_an_error(
    real_redis: redis_py.Redis,
) -> None:
    wait = resp.pack(["WAIT", "0", "10"])  # no replica wanted: answers at once
    assert resp.execute_packed_then_wait(real_redis, resp.pack(["SET", "w", "1"]), wait) == (
        b"OK", 0)
    with pytest.raises(redis_py.ResponseError, match="wrong number of arguments"):
        resp.execute_packed_then_wait(real_redis, resp.pack(["GET"]), wait)
    assert real_redis.get("w") == b"1"  # WAIT's reply was read too: the connection is in step
