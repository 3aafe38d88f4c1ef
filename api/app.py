"""The FastAPI application: wiring, middleware, health, OpenAPI."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import ServicesDep
from api.errors import install_error_handlers, problem, problem_responses
from api.limits import RequestLimits
from api.logs import redact_search_text
from api.metrics import exposition
from api.plain_creates import PlainCreates
from api.plain_lists import PlainListings
from api.request_context import REQUEST_ID_HEADER, RequestContextMiddleware
from api.routes import router
from api.schemas import Problem
from api.services import Services
from api.settings import Settings

log = logging.getLogger(__name__)

EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "X-Total-Count",
    "X-Ledger-Position",
    "X-Ledger-Version",
    "Link",
    "X-Projection-Pending",
    "Idempotent-Replayed",
    "X-Next-Task",
    "X-Request-ID",
    "Server-Timing",
]


# What /readyz answers 503 for, by readiness status.
_NOT_READY = {
    "unavailable": "the read tables are not served: {reason}",
    "building": "not ready: {reason}",
    "stalled": "not ready: {reason}",
}


def _tune_garbage_collection() -> None:
    """What was made at start-up (modules, the app, pools: most of the heap) is moved
    out of the collector's sight, and young objects are collected less often: a
    request that decodes thousands of objects (an ``as_of`` replay, a big page) then
    triggers few collections, and none of them walks the whole start-up heap. With
    Python's defaults a full collection (50-100 ms here) landed on every few ``as_of``
    requests: their p99 fell from 130-166 ms to 43-112 ms on PostgreSQL."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _route(router: APIRouter, name: str) -> BaseRoute:
    return next(route for route in router.routes if getattr(route, "name", None) == name)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or (services.settings if services else Settings())
    services = services or Services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Route code (blocking database calls) runs in few threads: more only contend
        # for the GIL (a long latency tail), and never more than a pool has
        # connections, whose waits are kept short so that an outage fails fast.
        threads = min(settings.worker_threads, settings.db_pool_size)
        to_thread.current_default_thread_limiter().total_tokens = threads
        # Commands have threads of their own, more of them: see Settings.command_threads.
        services.command_limiter = CapacityLimiter(settings.command_threads)
        services.start()
        _tune_garbage_collection()
        try:
            yield
        finally:
            await services.aclose()
            services.close()

    app = FastAPI(
        title="taskledger",
        version="0.1.0",
        description="Event-sourced task service. Authenticate with a Better Auth JWT.",
        lifespan=lifespan,
        # No redirects at all: Starlette's would build the Location from the Host header.
        # A trailing slash is simply dropped instead (_SameWithoutTrailingSlash).
        redirect_slashes=False,
    )
    app.state.services = services
    # Innermost: a plain listing or create they answer has passed every layer but the
    # routing.
    routes = {"tasks": "list_tasks", "stats": "task_stats", "tags": "list_tags"}
    routes_by_path = {what: _route(router, name) for what, name in routes.items()}
    app.add_middleware(PlainListings, services=services, routes=routes_by_path)
    app.add_middleware(PlainCreates, services=services, route=_route(router, "create_task"))
    # Added before CORS, so it runs inside it: its refusals still carry CORS headers.
    app.add_middleware(RequestLimits, body_timeout=settings.body_timeout_seconds)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "If-Match",
            "Idempotency-Key",
            REQUEST_ID_HEADER,
        ],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
    # Outside CORS and the limits, so that their answers carry the request's id and
    # timing too, and are counted in the metrics; inside the slash trimming, which
    # copies the scope (the route matched is written into the scope this holds).
    app.add_middleware(RequestContextMiddleware)
    # Outermost: every layer after it sees the path without its trailing slash.
    app.add_middleware(_SameWithoutTrailingSlash)
    install_error_handlers(app)
    redact_search_text()
    app.include_router(router)

    @app.get("/healthz", tags=["operations"])
    @app.get("/health", tags=["operations"], summary="Healthz (alias, as some frontends probe)")
    async def healthz() -> dict[str, str]:
        """The process is alive. On the event loop: a liveness probe never waits
        behind the route threads (a slow database would have it restart the pod)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses=problem_responses(503))
    def readyz(services: ServicesDep) -> Any:
        """The databases answer and the read tables may be served; reports how far
        the projection lags the log and its state (``read_model``). 503 while the read
        tables are wrong, damaged or being rebuilt (``readiness`` "unavailable"), while
        this code's read model version is being built (``building``, with ``build``:
        its progress), and while the projection is stalled (``stalled``: writes still
        work); "degraded" (``reasons``) when the projection is behind beyond
        READY_MAX_LAG_*, answered READY_DEGRADED_STATUS."""
        try:
            ready = services.readiness()
        except Exception as error:
            log.warning("not ready: %s", type(error).__name__)
            return problem(503, "a database is unreachable", headers={"Retry-After": "1"})
        if ready["status"] in _NOT_READY:
            detail = _NOT_READY[ready["status"]].format(reason=ready["reason"])
            # ("status" is the HTTP status in a problem.)
            figures = {key: value for key, value in ready.items() if key != "status"}
            return problem(
                503, detail, headers={"Retry-After": "2"}, readiness=ready["status"], **figures
            )
        if ready["status"] == "degraded":
            return JSONResponse(ready, status_code=services.settings.ready_degraded_status)
        return ready

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics(services: ServicesDep) -> Response:
        """Prometheus text format: requests by route template and status (latency
        histograms), commands by outcome, event-store transactions and their size,
        read-your-writes waits, projector batches, JWKS fetches, each build's
        position, lag and state, and process figures; every worker's under
        ``serve --workers N``."""
        return Response(exposition(services), media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: _openapi(app, settings.list_envelope)  # type: ignore[method-assign]
    return app


class _SameWithoutTrailingSlash:
    """``/api/u/tasks/`` is ``/api/u/tasks``: served as it, not redirected to it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            raw_path = scope.get("raw_path") or path.encode()
            scope = {
                **scope,
                "path": path.rstrip("/") or "/",
                "raw_path": raw_path.rstrip(b"/") or b"/",
            }
        await self.app(scope, receive, send)


def _openapi(app: FastAPI, list_envelope: str | None) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        # Its nested models (the 422 errors) are components too, where its $refs point.
        components.update(problem_schema.pop("$defs", {}))
        components["Problem"] = problem_schema
        if list_envelope is not None:
            _document_envelope(schema, list_envelope)
        app.openapi_schema = schema
    return app.openapi_schema


def _document_envelope(schema: dict[str, Any], key: str) -> None:
    """The listing's answer as LIST_ENVELOPE wraps it (api.routes.list_tasks)."""
    answer = schema["paths"]["/api/{user_id}/tasks"]["get"]["responses"]["200"]
    content = answer["content"]["application/json"]
    tasks = content["schema"]
    count = {"type": "integer", "minimum": 0}
    content["schema"] = {
        "type": "object",
        "title": "TaskPage",
        "required": [key, "total", "limit", "offset"],
        "properties": {key: tasks, "total": count, "limit": count, "offset": count},
    }


def app_factory() -> FastAPI:
    """Entry point for uvicorn workers (``factory=True``): settings from the environment."""
    return create_app(Settings())


__all__ = ["app_factory", "create_app"]
