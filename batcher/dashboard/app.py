"""The dashboard's ASGI app: HTML pages, a JSON API and the operator actions.

Every figure comes from :func:`batcher.stats.detailed_stats` (what ``batcher stats --json``
prints) and :mod:`batcher.monitoring.reads`; every action from :mod:`batcher.control`.
The pages are static shells that ``static/dashboard.js`` fills from the API and refreshes.

Writes need the write token the server was started with: a browser sends it once to
``/login`` and then holds an HttpOnly, SameSite=Strict cookie (an HMAC of the token, never
the token); scripts may send ``Authorization: Bearer <token>``. Every write must also carry
the ``X-Batcher-Action`` header, which a cross-site form cannot send and a cross-site
``fetch`` cannot send without a CORS preflight this server never answers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson
import redis
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from batcher import control
from batcher.config import BatchProcessingConfig
from batcher.connection import same_server
from batcher.dashboard.pages import login_page, page
from batcher.keys import QueueKeys, split_shard
from batcher.monitoring import reads
from batcher.stats import detailed_stats

log = structlog.stdlib.get_logger(__name__)

COOKIE = "batcher_write"
ACTION_HEADER = "x-batcher-action"
DEAD_SHOWN = 50
INFLIGHT_SHOWN = 50


@dataclass(frozen=True)
class DashboardSettings:
    """What the app needs: a client, the settings every queue starts from, the write token."""

    client: redis.Redis
    base: BatchProcessingConfig
    write_token: str | None = None
    refresh_ms: int = 2000


def _digest(token: str) -> str:
    return hmac.new(token.encode(), b"batcher-dashboard-write", hashlib.sha256).hexdigest()


def _json(data: Any, status_code: int = 200) -> Response:
    # orjson, as `batcher stats --json`: the same numbers in the same form
    return Response(orjson.dumps(data), status_code=status_code,
                    media_type="application/json")


class Dashboard:
    """Route handlers bound to one :class:`DashboardSettings` (sync: Starlette runs them in
    its thread pool, and redis-py's client is thread-safe)."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.s = settings
        self._cookie = None if settings.write_token is None else _digest(settings.write_token)

    # -- helpers ---------------------------------------------------------------------------

    def can_write(self, request: Request) -> bool:
        token = self.s.write_token
        if token is None or self._cookie is None:
            return False
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(),
                                                              token.encode()):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), self._cookie)

    def config(self, request: Request) -> BatchProcessingConfig:
        name = request.path_params["queue"]
        try:
            QueueKeys(name)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None
        if name == self.s.base.queue:
            return self.s.base
        # another queue on the same server: the same settings, as `batcher stats -q NAME`
        # (its shards, if any, are found on the server: batcher.monitoring.sharded)
        return self.s.base.model_copy(update={"queue": name, "shards": 1})

    def _require_write(self, request: Request) -> None:
        if not self.can_write(request):
            raise HTTPException(403, "read-only: start the dashboard with a write token and "
                                     "unlock it")
        if ACTION_HEADER not in request.headers:
            raise HTTPException(403, f"writes need the {ACTION_HEADER} header")

    # -- pages -----------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        return HTMLResponse(page("overview", self.s.refresh_ms))

    def queue_page(self, request: Request) -> Response:
        config = self.config(request)
        return HTMLResponse(page("queue", self.s.refresh_ms, queue=config.queue))

    def batch_page(self, request: Request) -> Response:
        config = self.config(request)
        return HTMLResponse(page("batch", self.s.refresh_ms, queue=config.queue,
                                 batch=request.path_params["batch"]))

    def login_form(self, request: Request) -> Response:
        return HTMLResponse(login_page(self.s.write_token is not None))

    async def login(self, request: Request) -> Response:
        # a urlencoded form of one field: parsed here, without python-multipart
        form = parse_qs((await request.body()).decode(errors="replace"))
        given = form.get("token", [""])[0]
        token = self.s.write_token
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("dashboard.login_refused", client=getattr(request.client, "host", None))
            return HTMLResponse(login_page(token is not None, failed=True), status_code=403)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, _digest(token), httponly=True, samesite="strict")
        return response

    def logout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def _client(self, config: BatchProcessingConfig) -> redis.Redis:
        # on a cluster each queue is served by the master owning its slot
        return same_server(self.s.client, config.keys.state)

    # -- read API --------------------------------------------------------------------------

    def _access(self, request: Request) -> dict[str, bool]:
        return {"write": self.can_write(request),
                "token_configured": self.s.write_token is not None}

    def session(self, request: Request) -> Response:
        return _json(self._access(request))

    def queues(self, request: Request) -> Response:
        out = []
        # a sharded queue's shards (Q~i) are listed as the one queue Q
        names = dict.fromkeys(split_shard(q)[0] for q in reads.discover_queues(self.s.client))
        for name in names:
            config = (self.s.base if name == self.s.base.queue
                      else self.s.base.model_copy(update={"queue": name, "shards": 1}))
            out.append(detailed_stats(self._client(config), config))
        return _json({"queues": out, **self._access(request)})

    def queue(self, request: Request) -> Response:
        config = self.config(request)
        client = self._client(config)
        stats = detailed_stats(client, config)
        return _json({
            "stats": stats, **self._access(request),
            "paused_until_ms": control.paused_until_ms(client, config),
            "paused_forever_ms": control.PAUSED_FOREVER_MS,
            "inflight": reads.inflight_batches(client, config.keys, INFLIGHT_SHOWN),
            "dead": [r.view() for r in reads.dead_records(client, config, DEAD_SHOWN)],
        })

    def batch(self, request: Request) -> Response:
        config = self.config(request)
        detail = reads.batch_detail(self._client(config), config.keys, request.path_params["batch"])
        # a batch that is gone is an answer, not an error: acked batches vanish while watched
        return _json(detail or {"id": request.path_params["batch"], "gone": True})

    # -- actions ---------------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        self._require_write(request)
        config = self.config(request)
        name = request.path_params["action"]
        body = await request.body()
        params = orjson.loads(body) if body else {}
        ids = params.get("ids") if isinstance(params, dict) else None
        if ids is not None and not (isinstance(ids, list)
                                    and all(isinstance(i, str) for i in ids)):
            raise HTTPException(400, "ids must be a list of strings")
        done = await _run_sync(self._act, name, config, ids)
        log.info("dashboard.action", queue=config.queue, action=name, result=done)
        return _json(done)

    def _act(self, name: str, config: BatchProcessingConfig,
             ids: list[str] | None) -> dict[str, Any]:
        client = self._client(config)
        if name == "pause":
            return {"paused_until_ms": control.pause(client, config)}
        if name == "resume":
            control.resume(client, config)
            return {"resumed": True}
        if name == "flush":
            f = control.flush_now(client, config)
            return {"batches": f.batches, "entries": f.entries, "still_pending": f.still_pending}
        if name in ("requeue", "purge"):
            act = control.requeue_dead if name == "requeue" else control.purge_dead
            r = act(client, config, ids)
            return {"moved": r.moved, "purged": r.purged, "missing": r.missing}
        raise HTTPException(404, f"no action {name!r}")


async def _run_sync(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _redis_error(request: Request, exc: Exception) -> Response:
    return _json({"error": f"Redis: {exc}"}, 503)


def create_app(settings: DashboardSettings) -> Starlette:
    """The dashboard as a Starlette app (serve it with uvicorn, or test it with httpx)."""
    d = Dashboard(settings)
    static = StaticFiles(directory=str(resources.files("batcher.dashboard") / "static"))
    routes = [
        Route("/", d.overview),
        Route("/queues/{queue}", d.queue_page),
        Route("/queues/{queue}/batches/{batch}", d.batch_page),
        Route("/login", d.login_form, methods=["GET"]),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/api/session", d.session),
        Route("/api/queues", d.queues),
        Route("/api/queues/{queue}", d.queue),
        Route("/api/queues/{queue}/batches/{batch}", d.batch),
        Route("/api/queues/{queue}/actions/{action}", d.action, methods=["POST"]),
        Mount("/static", app=static, name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={redis.RedisError: _redis_error})


