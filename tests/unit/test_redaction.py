"""scrub(): passwords and API keys out of every text we log, store or print."""

from __future__ import annotations

import pytest

from batcher.redaction import forget_secrets, scrub, scrub_processor, scrub_value


@pytest.mark.parametrize(("text", "shown"), [
    ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
    ("at rediss://:p%40ss@h:1/0 now", "at rediss://:***@h:1/0 now"),
    ("unix:///tmp/r.sock?db=0&password=hunter22", "unix:///tmp/r.sock?db=0&password=***"),
    ("Authorization: Bearer abcdefgh123", "Authorization: Bearer ***"),
    ('{"Authorization": "Basic dXNlcjpwdw=="}', '{"Authorization": "Basic ***"}'),
    ("key sk-proj-ABCDEFGH12345 here", "key sk-*** here"),
    ("api_key=foo123 and more", "api_key=*** and more"),
    ("redis://h:6379/0 and http://example.com:80/a:b",
     "redis://h:6379/0 and http://example.com:80/a:b"),
])
def test_scrub_hides_passwords_and_keys(text: str, shown: str) -> None:
    assert scrub(text) == shown


def test_scrub_hides_the_values_of_secret_variables_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_API_KEY", "plainKey42xyz")
    monkeypatch.setenv("BATCH_REDIS_URL", "redis://:Pa55-word@h:1/0")
    forget_secrets()  # read at most once a second otherwise
    assert scrub("upstream echoed plainKey42xyz; auth Pa55-word failed") == (
        "upstream echoed ***; auth *** failed")


def test_log_events_and_nested_values_are_scrubbed() -> None:
    event = {"event": "x", "url": "redis://u:pw1@h/0",
             "headers": {"authorization": "Bearer s3cr3t-t0ken"}, "n": 3}
    assert scrub_processor(None, "info", dict(event)) == {
        "event": "x", "url": "redis://u:***@h/0", "headers": {"authorization": "Bearer ***"},
        "n": 3}
    assert scrub_value(["redis://:a1b2@h/0", 1]) == ["redis://:***@h/0", 1]
