"""Every command a real redis-server runs, read from MONITOR, with each script's own calls.

MONITOR shows a client's EVALSHA and then, marked ``[0 lua]``, every ``redis.call`` the script
made, with all its arguments: the keys a script really touches, declared in KEYS or not.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from batcher.scripts import lua_source

_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a",
            ord("b"): b"\b", ord('"'): b'"', ord("\\"): b"\\"}


def parse_monitor_line(line: bytes) -> tuple[bool, list[bytes]]:
    """(run by Lua?, the arguments) of one MONITOR line (Redis quotes them with sdscatrepr)."""
    head, _, rest = line.partition(b"] ")
    args: list[bytes] = []
    i = 0
    while i < len(rest):
        assert rest[i:i + 1] == b'"', line
        i += 1
        out = bytearray()
        while rest[i] != ord('"'):
            if rest[i] == ord("\\"):
                if rest[i + 1] == ord("x"):
                    out.append(int(rest[i + 2:i + 4], 16))
                    i += 4
                    continue
                out += _ESCAPES[rest[i + 1]]
                i += 2
                continue
            out.append(rest[i])
            i += 1
        args.append(bytes(out))
        i += 2  # the closing quote and the space
    return head.endswith(b" lua"), args


@dataclass
class ScriptCall:
    """One EVALSHA and the commands its script ran."""

    name: str
    declared: list[bytes]
    args: list[bytes]
    inner: list[list[bytes]] = field(default_factory=list)


class CommandLog:
    """MONITOR on ``url`` while the ``with`` block runs; ``lines`` then holds every command."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[tuple[bool, list[bytes]]] = []
        self._sentinel = f"monitor-end-{uuid.uuid4().hex}".encode()
        # no read timeout: the log may sit idle while the test computes
        self._client = redis.Redis.from_url(url, socket_timeout=None)
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> CommandLog:
        self._conn = self._client.connection_pool.get_connection()
        self._conn.send_command("MONITOR")
        assert self._conn.read_response() == b"OK"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            while True:
                raw = self._conn.read_response()
                is_lua, args = parse_monitor_line(bytes(raw))
                if not is_lua and args[0].lower() == b"echo" and args[1:] == [self._sentinel]:
                    return
                self.lines.append((is_lua, args))
        except BaseException as exc:  # noqa: BLE001 - re-raised by __exit__, in the test
            self._error = exc

    def __exit__(self, *exc: object) -> None:
        self._client.echo(self._sentinel)
        assert self._thread is not None
        self._thread.join(30)
        if self._error is not None:
            raise self._error
        self._conn.disconnect()
        self._client.close()

    def client_commands(self) -> list[list[bytes]]:
        """The clients' commands in order, less a script call that never ran (NOSCRIPT:
        no command of its own follows it; the client loads the script and calls again)."""
        out = []
        for i, (is_lua, args) in enumerate(self.lines):
            if is_lua:
                continue
            ran = i + 1 < len(self.lines) and self.lines[i + 1][0]
            if args[0].lower() in (b"evalsha", b"eval") and not ran:
                continue
            out.append(args)
        return out

    def script_calls(self, names: list[str]) -> list[ScriptCall]:
        """Each EVALSHA/EVAL of one of ``names`` (any flags variant) that ran, with the
        commands it ran."""
        by_sha: dict[str, str] = {}
        for name in names:
            for flags in (True, False):
                by_sha[hashlib.sha1(lua_source(name, flags=flags).encode()).hexdigest()] = name
        calls: list[ScriptCall] = []
        current: ScriptCall | None = None
        for is_lua, args in self.lines:
            if is_lua:
                if current is not None:
                    current.inner.append(args)
                continue
            current = None
            command = args[0].lower()
            if command in (b"evalsha", b"evalsha_ro", b"eval"):
                sha = (args[1] if command != b"eval"
                       else hashlib.sha1(args[1]).hexdigest().encode()).decode()
                numkeys = int(args[2])
                current = ScriptCall(by_sha.get(sha, f"unknown:{sha[:8]}"),
                                     list(args[3:3 + numkeys]), list(args[3 + numkeys:]))
                calls.append(current)
        return [c for c in calls if c.inner]


def keys_of(client: redis.Redis, command: list[bytes]) -> list[bytes]:
    """The key arguments of ``command``, as the server itself tells them (COMMAND GETKEYS)."""
    try:
        reply = client.command_getkeys(*command)
    except redis.ResponseError:
        return []  # a command without keys (TIME)
    return [k.encode() if isinstance(k, str) else bytes(k) for k in reply]
