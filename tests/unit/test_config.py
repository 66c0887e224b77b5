"""Settings (DESIGN §9) and the Redis client factory (DESIGN §3 "Connections")."""

from __future__ import annotations

import os
import sys

import pydantic
import pytest

from batcher.config import BatchProcessingConfig, env_name, load_config
from batcher.connection import connect, describe, ping_or_raise, redact
from batcher.errors import BatcherUnavailableError, ConfigError
from tests.support.redis_server import free_port

# DESIGN §9's defaults; the redis_url default is compared as a string, never connected to
TABLE_DEFAULTS: dict[str, object] = {
    "redis_url": "redis://localhost:6379/0",
    "queue": "default",
    "handler": "workers.handlers.echo:handle",
    "max_buffer_size": 1000,
    "max_buffer_bytes": 67108864,
    "size_threshold": 25,
    "min_batch_size": 5,
    "max_batch_size": 50,
    "max_batch_bytes": 1048576,
    "max_entry_bytes": 262144,
    "time_threshold_seconds": 300,
    "high_time_threshold_seconds": 120,
    "urgent_time_threshold_seconds": 60,
    "early_flush_pressure": 0.85,
    "emergency_flush_pressure": 0.95,
    "redis_memory_flush_pressure": 0.8,
    "max_buffer_age_seconds": 3600,
    "max_inflight_batches": 100,
    "job_timeout_seconds": 180,
    "lease_grace_seconds": 5,
    "dispatch_lease_seconds": 30,
    "reap_interval_seconds": 1,
    "max_attempts": 5,
    "retry_backoff_seconds": 2,
    "result_ttl_seconds": 86400,
    "dedupe_window_seconds": 86400,
    "dedupe_max_ids": 1000000,
    "overflow_policy": "reject",
    "block_timeout_seconds": 10,
    "max_pending_per_source": 0,
    "budget": "",
    "enable_adaptive_sizing": True,
    "enable_adaptive_timeout": True,
    "enable_priority_flushing": True,
    "enable_performance_monitoring": True,
    "performance_target_ms": 2000,
    "throughput_target_eps": 10,
    "report_interval_seconds": 300,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # a BATCH_* variable of the developer's shell must not leak into these tests
    for name in list(os.environ):
        if name.upper().startswith("BATCH_"):
            monkeypatch.delenv(name)


def test_defaults_equal_the_table() -> None:
    cfg = load_config()
    got = cfg.model_dump()
    assert {name: got[name] for name in TABLE_DEFAULTS} == TABLE_DEFAULTS
    assert isinstance(cfg.job_timeout_seconds, int)
    assert isinstance(cfg.result_ttl_seconds, int)


def test_every_field_is_in_the_table() -> None:
    # the TLS files, RQ's own Redis, replica acks, shards and the settings file are ours,
    # not DESIGN's (README has them)
    tls = {"redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"}
    ours = tls | {"rq_redis_url", "log_format", "replica_acks", "replica_acks_timeout_ms",
                  "shards", "settings_file"}
    assert set(BatchProcessingConfig.model_fields) == set(TABLE_DEFAULTS) | ours


def test_log_format_defaults_to_json_off_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert load_config().log_format == "json"


def test_log_format_defaults_to_console_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert load_config().log_format == "console"


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("time_threshold_seconds", "BATCH_TIME_THRESHOLD_SEC"),
        ("job_timeout_seconds", "BATCH_JOB_TIMEOUT_SEC"),
        ("lease_grace_seconds", "BATCH_LEASE_GRACE_SEC"),
        ("max_buffer_age_seconds", "BATCH_MAX_BUFFER_AGE_SEC"),
        ("max_buffer_size", "BATCH_MAX_BUFFER_SIZE"),
        ("redis_url", "BATCH_REDIS_URL"),
    ],
)
def test_env_name_maps_seconds_fields_to_sec_variables(field: str, variable: str) -> None:
    assert env_name(field) == variable


def test_sec_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_TIME_THRESHOLD_SEC", "400")
    monkeypatch.setenv("BATCH_JOB_TIMEOUT_SEC", "90")
    monkeypatch.setenv("BATCH_LEASE_GRACE_SEC", "0")
    monkeypatch.setenv("BATCH_RESULT_TTL_SEC", "0")
    cfg = load_config()
    assert cfg.time_threshold_seconds == 400
    assert cfg.job_timeout_seconds == 90
    assert cfg.lease_grace_seconds == 0
    assert cfg.result_ttl_seconds == 0


def test_seconds_spelling_of_a_variable_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_TIME_THRESHOLD_SECONDS", "400")
    assert load_config().time_threshold_seconds == 300


def test_plain_variables_and_case_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_QUEUE", "feeds")
    monkeypatch.setenv("BATCH_ENABLE_PRIORITY_FLUSHING", "false")
    monkeypatch.setenv("BATCH_OVERFLOW_POLICY", "BLOCK")
    cfg = load_config()
    assert (cfg.queue, cfg.enable_priority_flushing, cfg.overflow_policy) == (
        "feeds", False, "block",
    )


def test_a_variable_is_read_whatever_the_case_of_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("batch_queue", "lower")
    monkeypatch.setenv("Batch_Time_Threshold_Sec", "400")
    cfg = load_config()
    assert (cfg.queue, cfg.time_threshold_seconds) == ("lower", 400)


def test_a_batch_variable_that_names_no_setting_is_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # scripts/test's BATCH_TEST_SKIP_INSTALL and the like share the prefix
    monkeypatch.setenv("BATCH_TEST_SKIP_INSTALL", "1")
    assert load_config().queue == "default"


def test_keyword_construction_by_field_name_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_QUEUE", "from-env")
    cfg = BatchProcessingConfig(
        time_threshold_seconds=5, high_time_threshold_seconds=5,
        urgent_time_threshold_seconds=5, queue="q",
    )
    assert (cfg.time_threshold_seconds, cfg.queue) == (5, "q")


def test_load_config_ignores_none_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_QUEUE", "from-env")
    assert load_config(queue=None).queue == "from-env"
    assert load_config(queue="given").queue == "given"


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.queue = "other"  # type: ignore[misc]


BAD_VALUES = [
    ("BATCH_REDIS_URL", "http://localhost:6390", "redis://, rediss:// or unix://"),
    ("BATCH_REDIS_URL", "localhost:6390", "redis://, rediss:// or unix://"),
    ("BATCH_QUEUE", "a:b", "[A-Za-z0-9_-]{1,64}"),
    ("BATCH_QUEUE", "{q}", "[A-Za-z0-9_-]{1,64}"),
    ("BATCH_QUEUE", "x" * 65, "[A-Za-z0-9_-]{1,64}"),
    ("BATCH_HANDLER", "workers.handlers.echo", "module:function"),
    ("BATCH_HANDLER", "a b:c", "module:function"),
    ("BATCH_MAX_BUFFER_SIZE", "0", "must be an integer >= 1"),
    ("BATCH_MAX_BUFFER_SIZE", "ten", "must be an integer >= 1"),
    ("BATCH_MAX_BUFFER_BYTES", "1023", ">= 1024"),
    ("BATCH_SIZE_THRESHOLD", "0", ">= 1"),
    ("BATCH_MIN_BATCH_SIZE", "0", ">= 1"),
    ("BATCH_MAX_BATCH_SIZE", "1001", "<= 1000"),
    ("BATCH_MAX_BATCH_BYTES", "0", ">= 1"),
    ("BATCH_MAX_ENTRY_BYTES", "0", ">= 1"),
    ("BATCH_TIME_THRESHOLD_SEC", "0", "> 0"),
    ("BATCH_TIME_THRESHOLD_SEC", "-5", "> 0"),
    ("BATCH_TIME_THRESHOLD_SEC", "inf", "> 0"),
    ("BATCH_HIGH_TIME_THRESHOLD_SEC", "0", "> 0"),
    ("BATCH_URGENT_TIME_THRESHOLD_SEC", "nan", "> 0"),
    ("BATCH_EARLY_FLUSH_PRESSURE", "0.5", "> 0.5"),
    ("BATCH_EMERGENCY_FLUSH_PRESSURE", "1.01", "<= 1"),
    ("BATCH_MAX_BUFFER_AGE_SEC", "0", "> 0"),
    ("BATCH_MAX_INFLIGHT_BATCHES", "0", ">= 1"),
    ("BATCH_JOB_TIMEOUT_SEC", "180.5", "whole number >= 1"),
    ("BATCH_JOB_TIMEOUT_SEC", "0", "whole number >= 1"),
    ("BATCH_LEASE_GRACE_SEC", "-1", ">= 0"),
    ("BATCH_DISPATCH_LEASE_SEC", "0", "> 0"),
    ("BATCH_REAP_INTERVAL_SEC", "0", "> 0"),
    ("BATCH_MAX_ATTEMPTS", "0", ">= 1"),
    ("BATCH_RETRY_BACKOFF_SEC", "0", "> 0"),
    ("BATCH_RESULT_TTL_SEC", "-1", ">= 0"),
    ("BATCH_RESULT_TTL_SEC", "1.5", "integer >= 0"),
    ("BATCH_DEDUPE_WINDOW_SEC", "-1", ">= 0"),
    ("BATCH_DEDUPE_MAX_IDS", "-1", ">= 0"),
    ("BATCH_OVERFLOW_POLICY", "drop", "'reject' or 'block'"),
    ("BATCH_BLOCK_TIMEOUT_SEC", "0", "> 0"),
    ("BATCH_ENABLE_ADAPTIVE_SIZING", "maybe", "true or false"),
    ("BATCH_ENABLE_PERFORMANCE_MONITORING", "2", "true or false"),
    ("BATCH_PERFORMANCE_TARGET_MS", "0", "> 0"),
    ("BATCH_THROUGHPUT_TARGET_EPS", "-1", "> 0"),
    ("BATCH_REPORT_INTERVAL_SEC", "0", "> 0"),
    ("BATCH_LOG_FORMAT", "xml", "'json' or 'console'"),
    ("BATCH_REPLICA_ACKS", "-1", "must be an integer >= 0"),
    ("BATCH_REPLICA_ACKS_TIMEOUT_MS", "0", "must be an integer >= 1 and <= 9000"),
    ("BATCH_REPLICA_ACKS_TIMEOUT_MS", "9001", "must be an integer >= 1 and <= 9000"),
]


@pytest.mark.parametrize(("variable", "value", "rule"), BAD_VALUES)
def test_bad_value_names_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, rule: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_config()
    message = str(caught.value)
    assert message.startswith(f"{variable}={value!r}: ")
    assert rule in message
    assert "\n" not in message


def test_max_buffer_size_message_reads_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_MAX_BUFFER_SIZE", "0")
    with pytest.raises(ConfigError, match=r"^BATCH_MAX_BUFFER_SIZE='0': must be an integer >= 1$"):
        load_config()


CROSS_FIELD = [
    ({"BATCH_MIN_BATCH_SIZE": "60"}, "BATCH_MIN_BATCH_SIZE='60'", "BATCH_MAX_BATCH_SIZE"),
    ({"BATCH_SIZE_THRESHOLD": "60"}, "BATCH_SIZE_THRESHOLD='60'", "BATCH_MAX_BATCH_SIZE (50)"),
    ({"BATCH_SIZE_THRESHOLD": "4"}, "BATCH_SIZE_THRESHOLD='4'", "BATCH_MIN_BATCH_SIZE (5)"),
    ({"BATCH_MAX_ENTRY_BYTES": "2000000"}, "BATCH_MAX_ENTRY_BYTES='2000000'",
     "BATCH_MAX_BATCH_BYTES"),
    ({"BATCH_HIGH_TIME_THRESHOLD_SEC": "301"}, "BATCH_HIGH_TIME_THRESHOLD_SEC='301'",
     "BATCH_TIME_THRESHOLD_SEC (300)"),
    ({"BATCH_URGENT_TIME_THRESHOLD_SEC": "121"}, "BATCH_URGENT_TIME_THRESHOLD_SEC='121'",
     "BATCH_HIGH_TIME_THRESHOLD_SEC (120)"),
    ({"BATCH_EARLY_FLUSH_PRESSURE": "0.95"}, "BATCH_EARLY_FLUSH_PRESSURE='0.95'",
     "BATCH_EMERGENCY_FLUSH_PRESSURE"),
    ({"BATCH_MAX_BUFFER_AGE_SEC": "299"}, "BATCH_MAX_BUFFER_AGE_SEC='299'",
     "BATCH_TIME_THRESHOLD_SEC (300)"),
]


@pytest.mark.parametrize(("env", "names", "other"), CROSS_FIELD)
def test_cross_field_rules_name_both_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: str, other: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert str(caught.value).startswith(names)
    assert other in str(caught.value)


def test_boundary_values_are_accepted() -> None:
    cfg = load_config(
        min_batch_size=1, size_threshold=1000, max_batch_size=1000, max_entry_bytes=1048576,
        time_threshold_seconds=60, high_time_threshold_seconds=60,
        urgent_time_threshold_seconds=60, max_buffer_age_seconds=60,
        early_flush_pressure=0.9, emergency_flush_pressure=1,
    )
    assert cfg.max_batch_size == 1000


def test_several_bad_values_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_MAX_BUFFER_SIZE", "0")
    monkeypatch.setenv("BATCH_QUEUE", "bad queue\nname")
    with pytest.raises(ConfigError) as caught:
        load_config()
    message = str(caught.value)
    assert "\n" not in message
    assert "BATCH_MAX_BUFFER_SIZE='0'" in message
    assert "BATCH_QUEUE=" in message
    assert "; " in message


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="no_such_setting: unknown setting"):
        load_config(no_such_setting=1)


def test_redis_url_error_hides_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_REDIS_URL", "http://user:hunter2@host:6390/0")
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert "hunter2" not in str(caught.value)
    assert "BATCH_REDIS_URL='http://user:***@host:6390/0'" in str(caught.value)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h", "unix:///tmp/redis.sock?db=1"])
def test_redis_url_schemes_are_accepted(url: str) -> None:
    assert load_config(redis_url=url).redis_url == url


def test_rq_redis_url_defaults_to_the_batchers_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_RQ_REDIS_URL", "")  # an empty variable is an unset one
    cfg = load_config(redis_url="redis://h:1/0")
    assert (cfg.rq_redis_url, cfg.rq_apart) == (None, False)
    client = cfg.redis_client()
    # one Redis: RQ's traffic goes through the very same client (same round trips as ever)
    assert cfg.rq_client_for(client) is client
    assert cfg.rq_redis_client().connection_pool.connection_kwargs["port"] == 1
    same = load_config(redis_url="redis://h:1/0", rq_redis_url="redis://h:1/0")
    assert not same.rq_apart and same.rq_client_for(client) is client


def test_rq_redis_url_names_rqs_own_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_RQ_REDIS_URL", "redis://rq-host:6390/2")
    cfg = load_config(redis_url="redis://h:1/0")
    assert cfg.rq_apart
    client = cfg.redis_client(oom_tolerant=True)
    rq_client = cfg.rq_client_for(client)
    kwargs = rq_client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("rq-host", 6390, 2)
    assert cfg.rq_client_for(client) is rq_client  # built once per batcher client
    # the daemons' bookkeeping passes a full Redis on RQ's server too (batcher.oom)
    assert type(rq_client) is type(client)


def test_rq_redis_url_over_tls_gets_the_same_tls_files(tmp_path: object) -> None:
    ca = os.path.join(str(tmp_path), "ca.pem")
    with open(ca, "w") as f:
        f.write("not read until a connection is made")
    cfg = load_config(redis_url="rediss://h:1/0", rq_redis_url="rediss://rq:2/0",
                      redis_tls_ca_file=ca)
    assert cfg.rq_redis_client().connection_pool.connection_kwargs["ssl_ca_certs"] == ca
    plain = cfg.with_overrides(rq_redis_url="redis://rq:2/0")
    assert "ssl_ca_certs" not in plain.rq_redis_client().connection_pool.connection_kwargs


def test_rq_redis_url_error_hides_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_RQ_REDIS_URL", "http://user:hunter2@host:6390/0")
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert "hunter2" not in str(caught.value)
    assert "BATCH_RQ_REDIS_URL='http://user:***@host:6390/0': must be empty or a redis://" in (
        str(caught.value))


def test_with_overrides_returns_a_validated_copy() -> None:
    cfg = load_config()
    other = cfg.with_overrides(queue="other", size_threshold=10)
    assert (other.queue, other.size_threshold, cfg.queue) == ("other", 10, "default")
    with pytest.raises(ConfigError, match=r"^BATCH_SIZE_THRESHOLD='60'"):
        cfg.with_overrides(size_threshold=60)


def test_thresholds_ms_follow_priority_flushing() -> None:
    cfg = load_config(time_threshold_seconds=2.5, high_time_threshold_seconds=1,
                      urgent_time_threshold_seconds=0.5)
    assert cfg.thresholds_ms() == (2500, 1000, 500)
    flat = cfg.with_overrides(enable_priority_flushing=False)
    assert flat.thresholds_ms() == (2500, 2500, 2500)


def test_keys_job_lease_and_limits() -> None:
    cfg = load_config(queue="feeds", job_timeout_seconds=60, lease_grace_seconds=2.5)
    assert cfg.keys.pending == "batcher:{feeds}:pending"
    assert cfg.job_lease_ms == 62500
    limits = cfg.limits()
    assert limits["max_buffer_size"] == 1000
    assert limits["time_threshold_ms"] == 300000
    assert limits["urgent_time_threshold_ms"] == 60000
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in limits.values())


# ---- connection.py -------------------------------------------------------------------


def test_connect_sets_the_project_options_without_a_server() -> None:
    client = connect("redis://localhost:1/2")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["decode_responses"] is False
    assert kwargs["socket_connect_timeout"] == 5
    assert kwargs["socket_timeout"] == 10
    assert kwargs["health_check_interval"] == 30
    assert kwargs["retry"].get_retries() == 0
    assert kwargs["retry_on_timeout"] is False
    connection = client.connection_pool.make_connection()
    assert connection.retry.get_retries() == 0
    client.close()


def test_connections_do_not_read_package_metadata_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py 8 looks its own version up in the installed metadata for every new connection
    # (~5 ms): once per job in a forking worker's work horse, whose pool starts empty
    import redis.utils

    client = connect("redis://localhost:1/0")
    calls = []
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: calls.append(1) or "x")
    for _ in range(3):
        client.connection_pool.make_connection()
    assert calls == []


def test_connect_for_blocking_calls_times_out_after_them() -> None:
    client = connect("redis://localhost:1/0", blocking_seconds=30)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 35
    client.close()


def test_connect_refuses_an_unparsable_url_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        connect("ftp://user:hunter2@host/0")
    assert "hunter2" not in str(caught.value)


@pytest.mark.timeout(20)
def test_ping_or_raise_on_an_unused_port_hides_the_password() -> None:
    client = connect(f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    with pytest.raises(BatcherUnavailableError) as caught:
        ping_or_raise(client)
    message = str(caught.value)
    assert message.startswith("Redis unreachable at redis://user:***@127.0.0.1:")
    assert "hunter2" not in message
    client.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6390/0", "redis://:***@h:6390/0"),
        ("rediss://user:p%40ss@h/1?ssl_cert_reqs=none", "rediss://user:***@h/1?ssl_cert_reqs=none"),
        ("unix:///tmp/r.sock?db=0&password=pw", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://h:6390/0", "redis://h:6390/0"),
        ("redis://user@h", "redis://user@h"),
    ],
)
def test_redact_hides_passwords_only(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_describe_rebuilds_the_url_without_the_password() -> None:
    client = connect("unix:///tmp/r.sock?db=3&password=pw")
    assert describe(client) == "unix:///tmp/r.sock?db=3&password=***"
    client.close()


def test_replica_acks_default_to_none_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config()
    assert (config.replica_acks, config.replica_acks_timeout_ms) == (0, 1000)
    monkeypatch.setenv("BATCH_REPLICA_ACKS", "2")
    monkeypatch.setenv("BATCH_REPLICA_ACKS_TIMEOUT_MS", "250")
    config = load_config()
    assert (config.replica_acks, config.replica_acks_timeout_ms) == (2, 250)
