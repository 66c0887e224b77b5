"""A tiny local HTTP server for feed files, for tests and the demo.

Serves ``<directory>/<name>`` at ``/<name>`` with ETag and Last-Modified (and a
304 for a matching conditional GET), gzip when the client asks, and a few
paths that misbehave on purpose:

- ``/redirect/<name>`` answers 301 to ``/<name>``;
- ``/slow/<name>`` sleeps ``slow_seconds`` before answering (for timeouts);
- ``/status/<code>`` answers that status with a short text body (429 and 503 with
  ``Retry-After: 7``).
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import threading
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

SAMPLE_FEEDS_DIR = Path(__file__).parent / "sample_feeds"
SAMPLE_FEEDS_TOML = SAMPLE_FEEDS_DIR / "feeds.toml"

_CONTENT_TYPES = {
    ".xml": "application/xml; charset=utf-8",
    ".rss": "application/rss+xml",
    ".rdf": "application/rdf+xml",
    ".atom": "application/atom+xml",
    ".json": "application/feed+json",
}


class FeedServer(ThreadingHTTPServer):
    """The server ``serve_feeds`` starts; ``requests`` records (path, headers) of each."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], directory: Path, slow_seconds: float) -> None:
        super().__init__(address, _FeedHandler)
        self.directory = directory.resolve()
        self.slow_seconds = slow_seconds
        self.stopping = threading.Event()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, headers))

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client killed mid-request (the fetcher benchmark does it on purpose)
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Wake sleeping /slow/ handlers, stop serving and close the socket."""
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _FeedHandler(BaseHTTPRequestHandler):
    server: FeedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests and the demo have their own logs; stderr noise helps nobody

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.record(path, {k.lower(): v for k, v in self.headers.items()})
        try:
            self._route(path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing left to answer

    def _route(self, path: str) -> None:
        if path.startswith("/redirect/"):
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", "/" + path.removeprefix("/redirect/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/status/"):
            code = path.removeprefix("/status/")
            self._text(int(code) if code.isdigit() and 200 <= int(code) < 600 else 400)
        elif path.startswith("/slow/"):
            if not self.server.stopping.wait(self.server.slow_seconds):
                self._file(path.removeprefix("/slow/"))
        else:
            self._file(path.lstrip("/"))

    def _text(self, code: int) -> None:
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else ""
        body = f"{code} {phrase}\n".encode()
        self.send_response(code)
        if code in (429, 503):
            self.send_header("Retry-After", "7")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, name: str) -> None:
        target = (self.server.directory / name).resolve()
        if target.parent != self.server.directory or not target.is_file():
            self._text(404)
            return
        body = target.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        mtime = int(target.stat().st_mtime)
        if self._not_modified(etag, mtime):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", _CONTENT_TYPES.get(target.suffix, "application/xml"))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(mtime, usegmt=True))
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_modified(self, etag: str, mtime: int) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
            return etag in [tag.strip() for tag in if_none_match.split(",")]
        since = self.headers.get("If-Modified-Since")
        if since is None:
            return False
        try:
            return mtime <= parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False


def serve_feeds(
    directory: str | Path = SAMPLE_FEEDS_DIR,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    slow_seconds: float = 5.0,
) -> tuple[FeedServer, str]:
    """Serve ``directory`` from a daemon thread; returns (server, base_url).

    Call ``server.stop()`` when done. ``port=0`` picks a free port.
    """
    server = FeedServer((host, port), Path(directory), slow_seconds)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="feed-server", daemon=True
    )
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    return server, f"http://{bound_host!s}:{bound_port}"
