"""A built-in OpenAI-compatible fake LLM server for the demo and the tests.

It reads the entries out of prompts built by ``workers.handlers.llm.build_prompt``,
sleeps ``base_latency_ms + per_entry_ms × n`` (so latency grows with batch size) and
answers a chat completion whose content is the JSON array the handler asks for.
Run it alone with ``python -m batcher.fake_llm --port 8000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from batcher.provider_limits import ProviderLimits
from workers.handlers.llm import parse_entry_lines

log = structlog.stdlib.get_logger(__name__)

MODEL_ID = "fake-llm"
_KEYWORDS = {
    "technology": ("software", "ai", "python", "chip", "app", "cloud", "linux", "release", "tech"),
    "science": ("space", "study", "research", "nasa", "climate", "species", "physics"),
    "business": ("market", "stock", "company", "earnings", "startup", "economy", "bank"),
    "politics": ("election", "vote", "government", "minister", "senate", "policy", "law"),
    "sports": ("match", "cup", "league", "team", "season", "goal", "olympic"),
    "health": ("health", "vaccine", "hospital", "disease", "medical"),
}
_URGENT = ("breaking", "urgent", "crisis", "record", "major")


@dataclass
class FakeLLMOptions:
    base_latency_ms: float = 50
    per_entry_ms: float = 10
    omit_rate: float = 0.0
    rate_limit_every: int = 0
    retry_after_seconds: float = 1
    junk_rate: float = 0.0
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    limits: ProviderLimits | None = None  # RPM / TPM of its own (issue 17)


class FakeLLMServer(ThreadingHTTPServer):
    """The server object: ``requests``, ``entries``, ``rate_limited``, ``junk`` count what it did.

    ``request_sizes`` lists the entries of each answered request. Tests may change
    ``options`` (e.g. ``junk_rate``) between requests.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], options: FakeLLMOptions):
        super().__init__(address, _Handler)
        self.options = options
        self.lock = threading.Lock()
        self.requests = 0
        self.entries = 0
        self.rate_limited = 0
        self.junk = 0
        self.request_sizes: list[int] = []

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def decide(self, n_entries: int) -> str:
        """``rate_limit``, ``junk`` or ``answer`` for the next request, counting it."""
        opts = self.options
        with self.lock:
            self.requests += 1
            if opts.rate_limit_every > 0 and self.requests % opts.rate_limit_every == 0:
                self.rate_limited += 1
                return "rate_limit"
            if opts.junk_rate > 0 and opts.rng.random() < opts.junk_rate:
                self.junk += 1
                return "junk"
            self.entries += n_entries
            self.request_sizes.append(n_entries)
            return "answer"

    def omit(self) -> bool:
        with self.lock:
            return self.options.omit_rate > 0 and self.options.rng.random() < self.options.omit_rate


def fake_result(entry_id: str, title: str) -> dict[str, Any]:
    """A deterministic answer: the title's first words, a keyword category, an importance."""
    words = title.split()
    lowered = {w.strip(".,:;!?'\"()").lower() for w in words}
    category = next((c for c, keys in _KEYWORDS.items() if lowered & set(keys)), "other")
    digest = hashlib.sha1(entry_id.encode()).digest()[0]
    importance = 5 if lowered & set(_URGENT) else 1 + digest % 4
    summary = " ".join(words[:12]) or "(untitled)"
    return {"id": entry_id, "summary": summary, "category": category, "importance": importance}


def _completion(content: str, prompt_chars: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": (prompt_chars + len(content)) // 4,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLMServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the handler's pooled client expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per request would drown the demo's progress display

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout ran out); nothing left to answer.
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": MODEL_ID, "object": "model", "owned_by": "redis-batcher"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            messages = json.loads(raw)["messages"]
            prompt = "\n".join(str(m.get("content", "")) for m in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            self._send_json(400, {"error": {"message": "expected a chat completion request"}})
            return
        self._answer(prompt)

    def _answer(self, prompt: str) -> None:
        entries = parse_entry_lines(prompt)
        limits = self.server.options.limits
        limit_headers: dict[str, str] = {}
        if limits is not None:
            admitted, limit_headers = limits.admit(len(prompt) // 4)
            if not admitted:
                self._send_json(429, {"error": {"message": "rate limit reached",
                                                "type": "requests", "code": "rate_limit_exceeded"}},
                                limit_headers)
                return
        decision = self.server.decide(len(entries))
        if decision == "rate_limit":
            retry = self.server.options.retry_after_seconds
            headers = {"Retry-After": f"{retry:g}"}
            self._send_json(429, {"error": {"message": "rate limited"}}, headers)
            return
        opts = self.server.options
        time.sleep((opts.base_latency_ms + opts.per_entry_ms * len(entries)) / 1000)
        if decision == "junk":
            content = "Sorry, I cannot help with that. {not json"
        else:
            results = [fake_result(i, t) for i, t in entries if not self.server.omit()]
            content = json.dumps(results)
        if limits is not None:
            limit_headers = limits.charge_output(len(content) // 4)
        self._send_json(200, _completion(content, len(prompt)), limit_headers)


def serve_fake_llm(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    base_latency_ms: float = 50,
    per_entry_ms: float = 10,
    omit_rate: float = 0.0,
    rate_limit_every: int = 0,
    seed: int | None = None,
    retry_after_seconds: float = 1,
    junk_rate: float = 0.0,
    limits: ProviderLimits | None = None,
) -> tuple[FakeLLMServer, str]:
    """Start the fake in a daemon thread; returns (server, base URL without ``/v1``).

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    options = FakeLLMOptions(
        base_latency_ms=base_latency_ms,
        per_entry_ms=per_entry_ms,
        omit_rate=omit_rate,
        rate_limit_every=rate_limit_every,
        retry_after_seconds=retry_after_seconds,
        junk_rate=junk_rate,
        seed=seed,
        rng=random.Random(seed),
        limits=limits,
    )
    server = FakeLLMServer((host, port), options)
    # A short poll interval so shutdown() returns fast in tests.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
    )
    thread.start()
    log.info("fake_llm.started", base_url=server.base_url)
    return server, server.base_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible fake LLM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--base-latency-ms", type=float, default=50)
    parser.add_argument("--per-entry-ms", type=float, default=10)
    parser.add_argument("--omit-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rpm", type=float, default=0, help="requests per minute (0 = none)")
    parser.add_argument("--itpm", type=float, default=0, help="input tokens per minute")
    parser.add_argument("--otpm", type=float, default=0, help="output tokens per minute")
    args = parser.parse_args(argv)
    limited = args.rpm > 0 or args.itpm > 0 or args.otpm > 0
    server, base_url = serve_fake_llm(
        args.host,
        args.port,
        base_latency_ms=args.base_latency_ms,
        per_entry_ms=args.per_entry_ms,
        omit_rate=args.omit_rate,
        rate_limit_every=args.rate_limit_every,
        seed=args.seed,
        limits=ProviderLimits(args.rpm, args.itpm, args.otpm) if limited else None,
    )
    print(f"fake LLM listening on {base_url} (LLM_BASE_URL={base_url})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
