"""Each request's id, who sent it and where its time went: one object per request,
reachable from everything that runs for it (its log lines, its problem answers, the
timing of its command or query), sent back as ``X-Request-ID`` and ``Server-Timing``.

A pure ASGI middleware: Starlette's BaseHTTPMiddleware would run the app in a task of
its own (a copied context, where nothing set inside shows outside) and cost each
request a second task and a queue of messages."""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter
from types import TracebackType

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import request_answered

REQUEST_ID_HEADER = "X-Request-ID"
# A client's (or a proxy's) id is kept when it is one token of visible ASCII: it is
# echoed in a header and written to every log line, so nothing else gets through.
_CLIENT_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_HEADER = REQUEST_ID_HEADER.lower().encode()
# New ids: 64 random bits drawn once per process, then a count (32 hex digits in all,
# unique across processes and replicas): a uuid4 per request cost a system call.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(secrets.randbelow(2**32))
# Where a request's context is kept in its scope's "state" (the server's dict for that
# request, shared by every copy of the scope): for the edge (api/http_protocol.py),
# which may answer a request from outside the task that handles it.
_STATE_KEY = "taskledger.request"


def _new_id_prefix() -> None:
    # A process forked after import (a pre-loading process manager) draws its own.
    global _ID_PREFIX, _ids  # noqa: PLW0603 - the two values request_id_of reads
    _ID_PREFIX = secrets.token_hex(8)
    _ids = itertools.count(secrets.randbelow(2**32))


os.register_at_fork(after_in_child=_new_id_prefix)


class RequestContext:
    """What is known of the request under way. The object is shared, not copied: a
    field set in a route's thread or a dependency shows in the middleware's answer."""

    __slots__ = (
        "duration",
        "method",
        "request_id",
        "scope",
        "started",
        "status",
        "timings",
        "user_id",
    )

    def __init__(self, request_id: str, scope: Scope) -> None:
        self.request_id = request_id
        self.method: str = scope["method"]
        # The route FastAPI matches is written into this scope (scope["route"]).
        self.scope = scope
        self.started = perf_counter()
        # The token's sub, once the request is authenticated.
        self.user_id: str | None = None
        # Seconds spent per part ("command", "ryw", "query"), in the order first met.
        self.timings: dict[str, float] = {}
        self.status: int | None = None
        # Seconds from the request's arrival to its answer's head.
        self.duration: float | None = None

    @property
    def route(self) -> str | None:
        """The matched route's template (``/api/{user_id}/tasks``), not the path."""
        return getattr(self.scope.get("route"), "path_format", None)

    def elapsed(self) -> float:
        return self.duration if self.duration is not None else perf_counter() - self.started

    def server_timing(self) -> str:
        parts = [f"{name};dur={seconds * 1000:.2f}" for name, seconds in self.timings.items()]
        parts.append(f"total;dur={self.elapsed() * 1000:.2f}")
        return ", ".join(parts)


_current: ContextVar[RequestContext | None] = ContextVar("taskledger_request", default=None)


def current() -> RequestContext | None:
    """The request under way here (None outside a request: the projector, start-up)."""
    return _current.get()


@contextmanager
def within(context: RequestContext) -> Iterator[None]:
    """Runs the block as part of ``context``'s request (its log lines, its problem
    answers) outside the request's own task: the edge's refusals."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def context_of(scope: Scope) -> RequestContext:
    """The context of the request whose head made ``scope``: the one its middleware
    opened, or else a new one, which the middleware takes up when it runs."""
    state = scope["state"]
    context: RequestContext | None = state.get(_STATE_KEY)
    if context is None:
        context = state[_STATE_KEY] = RequestContext(request_id_of(scope), scope)
    return context


def note_user(user_id: str) -> None:
    """The request is authenticated as ``user_id`` (its log lines say so from now on)."""
    if (context := _current.get()) is not None:
        context.user_id = user_id


class timed:  # noqa: N801 - used as a statement: ``with timed("query"):``
    """Adds the time spent in the block to the request's ``part`` (nothing outside a
    request). A class, not a generator: it runs on every query."""

    __slots__ = ("_context", "_part", "_start")

    def __init__(self, part: str) -> None:
        self._part = part
        self._context = _current.get()
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._context is not None:
            timings = self._context.timings
            timings[self._part] = timings.get(self._part, 0.0) + perf_counter() - self._start


def request_id_of(scope: Scope) -> str:
    """The id the request came with, if it is a valid one; a new one otherwise (an
    invalid id is replaced, not refused: the request itself is fine)."""
    value: bytes
    for name, value in scope["headers"]:
        if name == _HEADER:
            if _CLIENT_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return f"{_ID_PREFIX}{next(_ids):016x}"


class RequestContextMiddleware:
    """Opens each HTTP request's context, sends ``X-Request-ID`` and ``Server-Timing``
    with its answer, and times the request for the metrics once it has ended."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(request_id_of(scope), scope)
        if (state := scope.get("state")) is not None:
            # Found there by the edge, if it refuses the request while its body
            # arrives; or opened there by the edge already. (Taken out at the end: the
            # scope holding its own context would be a cycle, left to the collector.)
            context = state.setdefault(_STATE_KEY, context)
        # Not reset afterwards: each request runs in a task of its own, and an error
        # answered outside this middleware (Starlette's 500) still finds its context.
        _current.set(context)

        counted_already = False

        def counted() -> None:
            nonlocal counted_already
            if not counted_already:
                counted_already = True
                request_answered(scope, context.status, perf_counter() - context.started)

        async def send_with_context(message: Message) -> None:
            # (Answered already when the edge refused the request: this answer is
            # dropped, and the edge's status is the one counted.)
            if message["type"] == "http.response.start" and context.status is None:
                context.status = message["status"]
                context.duration = perf_counter() - context.started
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (b"x-request-id", context.request_id.encode("ascii")),
                        (b"server-timing", context.server_timing().encode("ascii")),
                    ],
                }
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before its last bytes go out: a client that has the answer
                # finds it in the next scrape (uvicorn writes on send).
                counted()
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            if state is not None:
                del state[_STATE_KEY]
            counted()
