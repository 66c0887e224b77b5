"""A built-in OpenAI-compatible fake LLM server for the demo and the tests.

It reads the entries out of prompts built by ``batcher.llm.handler.build_prompt``,
sleeps ``base_latency_ms + per_entry_ms × n`` (so latency grows with batch size) and
answers a chat completion shaped as OpenAI's reference has it (``choices[].logprobs``,
``message.refusal``, ``usage`` with cached tokens, rate-limit headers; errors as
``{"error": {"message", "type", "param", "code"}}``).

It misbehaves on demand, as real providers do (``FAKE_LLM_MISBEHAVE``, comma-separated; each
request draws one at ``FAKE_LLM_MISBEHAVE_RATE``): ``fences``, ``prose``, ``truncate``,
``omit``, ``ratelimit`` (429 with ``retry-after-ms``, ``Retry-After`` or only
``x-ratelimit-reset-*``), ``overloaded`` (503), ``error500``, ``slow``, ``junk``; ``quota``
and ``auth`` open outage windows (429 ``insufficient_quota`` / 401) every
``FAKE_LLM_OUTAGE_EVERY`` requests for ``FAKE_LLM_OUTAGE_SEC``. Entries whose title carries
``[llm:reject]`` make their request a 400, ``[llm:refuse]`` a refusal, always.
Run it alone with ``python -m batcher.llm.fake --port 8000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from batcher.llm.prompt import parse_entry_lines
from batcher.llm.provider_limits import ProviderLimits

log = structlog.stdlib.get_logger(__name__)

MODEL_ID = "fake-llm"
MODEL_CREATED = 1_700_000_000
REJECT_MARK = "[llm:reject]"
REFUSE_MARK = "[llm:refuse]"
MISBEHAVIOURS = ("fences", "prose", "truncate", "omit", "ratelimit", "overloaded", "error500",
                 "slow", "junk", "quota", "auth")
_RANDOM_KINDS = tuple(m for m in MISBEHAVIOURS if m not in ("quota", "auth"))
_KEYWORDS = {
    "technology": ("software", "ai", "python", "chip", "app", "cloud", "linux", "release", "tech"),
    "science": ("space", "study", "research", "nasa", "climate", "species", "physics"),
    "business": ("market", "stock", "company", "earnings", "startup", "economy", "bank"),
    "politics": ("election", "vote", "government", "minister", "senate", "policy", "law"),
    "sports": ("match", "cup", "league", "team", "season", "goal", "olympic"),
    "health": ("health", "vaccine", "hospital", "disease", "medical"),
}
_URGENT = ("breaking", "urgent", "crisis", "record", "major")
_JSON_WORD_ERROR = ("'messages' must contain the word 'json' in some form, to use "
                    "'response_format' of type 'json_object'.")


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
    misbehave: tuple[str, ...] = ()
    misbehave_rate: float = 0.1
    outage_every: int = 60
    outage_seconds: float = 1.0
    slow_ms: float = 1500
    limits: ProviderLimits | None = None  # RPM / TPM of its own (issue 17)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> FakeLLMOptions:
        """``FAKE_LLM_MISBEHAVE`` and its ``FAKE_LLM_*`` knobs; raises ValueError on a bad one."""
        env = os.environ if env is None else env
        kinds = tuple(k.strip() for k in env.get("FAKE_LLM_MISBEHAVE", "").split(",") if k.strip())
        unknown = set(kinds) - set(MISBEHAVIOURS)
        if unknown:
            raise ValueError(f"FAKE_LLM_MISBEHAVE: unknown {sorted(unknown)}; "
                             f"known: {', '.join(MISBEHAVIOURS)}")
        knobs = {"misbehave_rate": "FAKE_LLM_MISBEHAVE_RATE",
                 "outage_every": "FAKE_LLM_OUTAGE_EVERY",
                 "outage_seconds": "FAKE_LLM_OUTAGE_SEC", "slow_ms": "FAKE_LLM_SLOW_MS"}
        for name, var in knobs.items():
            if env.get(var, "").strip():
                kwargs[name] = int(env[var]) if name == "outage_every" else float(env[var])
        seed = kwargs.get("seed")
        return cls(misbehave=kinds, rng=random.Random(seed), **kwargs)


class FakeLLMServer(ThreadingHTTPServer):
    """The server object: ``requests``, ``entries``, ``rate_limited``, ``junk`` count what it did.

    ``request_sizes`` lists the entries of each answered request, ``bodies`` the last request
    bodies, ``misbehaved`` counts each misbehaviour served. Tests may change ``options``.
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
        self.bodies: list[dict[str, Any]] = []
        self.misbehaved: Counter[str] = Counter()
        self.outage: tuple[str, float] | None = None  # kind, until (monotonic)
        self.outages = 0

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def decide(self, n_entries: int) -> str:
        """What the next request gets: ``answer`` or a misbehaviour's name; counts it."""
        opts = self.options
        with self.lock:
            self.requests += 1
            decision = self._draw(opts)
            if decision in ("ratelimit", "overloaded"):
                self.rate_limited += 1
            elif decision == "junk":
                self.junk += 1
            if decision != "answer":
                self.misbehaved[decision] += 1
            if decision in ("answer", "fences", "prose", "truncate", "omit", "slow", "junk"):
                self.entries += n_entries
                self.request_sizes.append(n_entries)
            return decision

    def _draw(self, opts: FakeLLMOptions) -> str:
        now = time.monotonic()
        if self.outage is not None and now < self.outage[1]:
            return self.outage[0]
        outages = [k for k in ("quota", "auth") if k in opts.misbehave]
        if outages and opts.outage_every > 0 and self.requests % opts.outage_every == 0:
            kind = outages[self.outages % len(outages)]
            self.outages += 1
            self.outage = (kind, now + opts.outage_seconds)
            return kind
        if opts.rate_limit_every > 0 and self.requests % opts.rate_limit_every == 0:
            return "ratelimit"
        if opts.junk_rate > 0 and opts.rng.random() < opts.junk_rate:
            return "junk"
        kinds = [k for k in opts.misbehave if k in _RANDOM_KINDS]
        if kinds and opts.rng.random() < opts.misbehave_rate:
            return opts.rng.choice(kinds)
        return "answer"

    def omit(self) -> bool:
        with self.lock:
            return self.options.omit_rate > 0 and self.options.rng.random() < self.options.omit_rate

    def keep_body(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.bodies.append(body)
            del self.bodies[:-500]


def fake_result(entry_id: str, title: str) -> dict[str, Any]:
    """A deterministic answer: the title's first words, a keyword category, an importance."""
    words = title.split()
    lowered = {w.strip(".,:;!?'\"()").lower() for w in words}
    category = next((c for c, keys in _KEYWORDS.items() if lowered & set(keys)), "other")
    digest = hashlib.sha1(entry_id.encode()).digest()[0]
    importance = 5 if lowered & set(_URGENT) else 1 + digest % 4
    summary = " ".join(words[:12]) or "(untitled)"
    return {"id": entry_id, "summary": summary, "category": category, "importance": importance}


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: every field present, ``param`` and ``code`` nullable."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def completion(content: str | None, prompt: str, *, finish_reason: str = "stop",
               refusal: str | None = None, system_chars: int = 0) -> dict[str, Any]:
    """A chat.completion object with every field the reference marks required."""
    prompt_tokens = len(prompt) // 4
    completion_tokens = len(content or refusal or "") // 4
    return {
        "id": f"chatcmpl-fake-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "system_fingerprint": "fp_fake",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal,
                        "annotations": []},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            # the instructions are the same for every request: a provider's prompt cache hit
            "prompt_tokens_details": {"cached_tokens": system_chars // 4, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        },
    }


def _rate_headers(remaining: int) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": str(remaining * 400),
            "x-ratelimit-reset-tokens": "1s"}


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
            model = {"id": MODEL_ID, "object": "model", "created": MODEL_CREATED,
                     "owned_by": "redis-batcher"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, error_body(f"no route {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, error_body(f"no route {self.path}", "invalid_request_error"))
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
            prompt = "\n".join(str(m.get("content", "")) for m in messages)
            system_chars = sum(len(str(m.get("content", ""))) for m in messages
                               if m.get("role") == "system")
        except (ValueError, KeyError, TypeError, AttributeError):
            self._send_json(400, error_body("expected a chat completion request",
                                            "invalid_request_error"))
            return
        self.server.keep_body(body)
        fmt = (body.get("response_format") or {}).get("type", "text")
        if fmt == "json_object" and "json" not in prompt.lower():
            self._send_json(400, error_body(_JSON_WORD_ERROR, "invalid_request_error",
                                            param="messages"))
            return
        self._answer(body, prompt, fmt, system_chars)

    def _error(self, decision: str) -> bool:
        retry = self.server.options.retry_after_seconds
        if decision == "ratelimit":
            # each of the three ways providers say how long to wait, in turn
            style = self.server.rate_limited % 3
            headers = _rate_headers(0)
            if style == 0:
                headers["retry-after-ms"] = f"{retry * 1000:.0f}"
            elif style == 1:
                headers["Retry-After"] = f"{retry:g}"
            else:
                headers["x-ratelimit-reset-requests"] = f"{retry:g}s"
            self._send_json(429, error_body("Rate limit reached for requests", "requests",
                                            "rate_limit_exceeded"), headers)
        elif decision == "overloaded":
            self._send_json(503, error_body("The server is overloaded", "server_error"),
                            {"Retry-After": f"{retry:g}"})
        elif decision == "error500":
            self._send_json(500, error_body("The server had an error", "server_error"))
        elif decision == "quota":
            self._send_json(429, error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota", "insufficient_quota"))
        elif decision == "auth":
            self._send_json(401, error_body("Incorrect API key provided: sk-fake***",
                                            "invalid_request_error", "invalid_api_key"))
        else:
            return False
        return True

    def _answer(self, body: dict[str, Any], prompt: str, fmt: str, system_chars: int) -> None:
        entries = parse_entry_lines(prompt)
        titles = " ".join(t for _, t in entries)
        if REJECT_MARK in titles:
            self._send_json(400, error_body(
                "Invalid prompt: your prompt was flagged as potentially violating our usage "
                "policy.", "invalid_request_error", "invalid_prompt", "messages"))
            return
        limits = self.server.options.limits
        if limits is not None:
            admitted, limit_headers = limits.admit(len(prompt) // 4)
            if not admitted:
                self._send_json(429, error_body("Rate limit reached for requests", "requests",
                                                "rate_limit_exceeded"), limit_headers)
                return
        decision = self.server.decide(len(entries))
        if self._error(decision):
            return
        opts = self.server.options
        slow = opts.slow_ms if decision == "slow" else 0
        time.sleep((opts.base_latency_ms + opts.per_entry_ms * len(entries) + slow) / 1000)
        headers = _rate_headers(max(0, 500 - self.server.requests))
        if REFUSE_MARK in titles:
            refusal = "I'm sorry, I can't help with that request."
            reply = completion(None, prompt, refusal=refusal, system_chars=system_chars)
        else:
            reply = self._content(body, entries, fmt, decision, prompt, system_chars)
        if limits is not None:
            # its own limits' headers, not the canned ones
            headers = limits.charge_output(reply["usage"]["completion_tokens"])
        self._send_json(200, reply, headers)

    def _content(self, body: dict[str, Any], entries: list[tuple[str, str]], fmt: str,
                 decision: str, prompt: str, system_chars: int) -> dict[str, Any]:
        rng = self.server.options.rng
        results = [fake_result(i, t) for i, t in entries if not self.server.omit()]
        if decision == "omit" and results:
            results.pop(rng.randrange(len(results)))
        value: Any = {"results": results} if fmt != "text" else results
        content = json.dumps(value)
        finish = "stop"
        if decision == "junk":
            content = "Sorry, I cannot help with that. {not json"
        elif decision == "fences":
            content = f"```json\n{content}\n```"
        elif decision == "prose":
            content = f"Here are the summaries you asked for:\n{content}\nAnything else?"
        elif decision == "truncate" and len(content) > 20:
            content, finish = content[: int(len(content) * rng.uniform(0.3, 0.9))], "length"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(content) > limit * 4:
            content, finish = content[: limit * 4], "length"
        return completion(content, prompt, finish_reason=finish, system_chars=system_chars)


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
    options: FakeLLMOptions | None = None,
) -> tuple[FakeLLMServer, str]:
    """Start the fake in a daemon thread; returns (server, base URL without ``/v1``).

    ``options`` (e.g. ``FakeLLMOptions.from_env()``) replaces the keyword knobs. Stop it with
    ``server.shutdown(); server.server_close()``.
    """
    if options is None:
        options = FakeLLMOptions(
            base_latency_ms=base_latency_ms, per_entry_ms=per_entry_ms, omit_rate=omit_rate,
            rate_limit_every=rate_limit_every, retry_after_seconds=retry_after_seconds,
            junk_rate=junk_rate, seed=seed, rng=random.Random(seed), limits=limits)
    server = FakeLLMServer((host, port), options)
    # A short poll interval so shutdown() returns fast in tests.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
    )
    thread.start()
    log.info("fake_llm.started", base_url=server.base_url, misbehave=list(options.misbehave))
    return server, server.base_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="An OpenAI-compatible fake LLM server (FAKE_LLM_MISBEHAVE=... to misbehave).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--base-latency-ms", type=float, default=50)
    parser.add_argument("--per-entry-ms", type=float, default=10)
    parser.add_argument("--omit-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-every", type=int, default=0)
    parser.add_argument("--retry-after-seconds", type=float, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rpm", type=float, default=0, help="requests per minute (0 = none)")
    parser.add_argument("--itpm", type=float, default=0, help="input tokens per minute")
    parser.add_argument("--otpm", type=float, default=0, help="output tokens per minute")
    args = parser.parse_args(argv)
    limited = args.rpm > 0 or args.itpm > 0 or args.otpm > 0
    options = FakeLLMOptions.from_env(
        base_latency_ms=args.base_latency_ms, per_entry_ms=args.per_entry_ms,
        omit_rate=args.omit_rate, rate_limit_every=args.rate_limit_every,
        retry_after_seconds=args.retry_after_seconds, seed=args.seed,
        limits=ProviderLimits(args.rpm, args.itpm, args.otpm) if limited else None)
    server, base_url = serve_fake_llm(args.host, args.port, options=options)
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
