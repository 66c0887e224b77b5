"""A TCP proxy in front of the test redis-server that loses a request or a reply on purpose.

Redis drops mid-call in two ways a client cannot tell apart: the request never arrived (the
command did not run), or the reply never came back (it ran). Both end in a ConnectionError;
the code's retries must leave every batch acked exactly once either way. The proxy arms on
a marker (a script's SHA1 in the request bytes) and then cuts that connection before the
request reaches the server, or after the server's reply, which it swallows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Literal

Loss = Literal["request", "reply"]
_CHUNK = 65536


@dataclass
class _Trap:
    marker: bytes
    loss: Loss
    sprung: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``upstream_port``; ``lose`` arms a one-shot cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._lock = threading.Lock()
        self._trap: _Trap | None = None
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose(self, marker: bytes, loss: Loss) -> threading.Event:
        """Cut the next connection whose request holds ``marker``, losing the request (the
        server never sees it) or the reply (the server ran it). The event is set once cut."""
        trap = _Trap(marker, loss)
        with self._lock:
            self._trap = trap
        return trap.sprung

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [downstream, upstream]
            armed: list[_Trap] = []  # the trap this connection's next reply springs
            threading.Thread(target=self._requests, args=(downstream, upstream, armed),
                             daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, downstream, armed),
                             daemon=True).start()

    def _take_trap(self, data: bytes) -> _Trap | None:
        with self._lock:
            trap = self._trap
            if trap is None or trap.marker not in data:
                return None
            self._trap = None
            return trap

    def _requests(self, src: socket.socket, dst: socket.socket, armed: list[_Trap]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(_CHUNK):
                trap = self._take_trap(data)
                if trap is not None and trap.loss == "request":
                    trap.sprung.set()  # before the cut: a client that sees it finds it set
                    _cut(src, dst)
                    return
                if trap is not None:
                    armed.append(trap)
                dst.sendall(data)
        _cut(src, dst)

    def _replies(self, src: socket.socket, dst: socket.socket, armed: list[_Trap]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(_CHUNK):
                if armed:  # the reply to the marked request: swallow it and hang up
                    armed[0].sprung.set()
                    _cut(src, dst)
                    return
                dst.sendall(data)
        _cut(src, dst)


def _cut(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
