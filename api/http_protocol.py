"""The HTTP/1.1 protocol of ``taskledger serve``: uvicorn's httptools protocol, with the
limits it lacks on what a connection may cost before the app is reached.

httptools is kept for its speed (h11 caps the head too, but answers 400 and costs more
per request). What this adds:

- a cap on a request head's bytes and on its header count (431), pipelined heads
  included: the parser is fed at most ``FEED_BYTES`` at a time, and when a request ends
  inside a piece the whole piece counts towards the next head (httptools does not say
  where the request ended), so a pipelined head may be refused up to ``FEED_BYTES``
  below the cap;
- a cap on what follows a head (body, chunk framing, trailers): ``MAX_BODY_BYTES`` plus
  the head cap, past which the request is refused 413 (chunk trailers would otherwise
  be taken into one header value of any length, built at a quadratic cost);
- a deadline for the head (from a connection's opening or a request's first byte) and
  a backstop deadline for a body that the app does not read (api/limits.py answers 408
  to the ones it does read);
- ``MAX_CONNECTIONS``: a connection past it is answered a problem+json 503 as soon as
  it opens, and none of it is read or buffered; a request that finds every worker slot
  busy is answered the same;
- a problem+json 503 at shutdown to a request still arriving, which uvicorn would
  otherwise wait for until its shutdown timeout and then answer 500.

Each of these answers is a request's answer like any other: it carries an
``X-Request-ID`` (the one sent, if valid and already read; a new one otherwise), the id
in its body, ``Server-Timing``, one access line and its count in the metrics. A request
refused once its head has arrived is also being handled by the app: it shares the app's
context (api/request_context.py), and the app's middleware counts it, once, with the
edge's status.

It relies only on uvicorn's long-standing protocol surface: the parser callbacks,
``connection_made``, ``data_received``, ``shutdown``, ``self.app``, ``self.headers``,
``self.connections``, ``self.tasks``, ``self.cycle``, ``self.scope``, ``self.url``,
``self.parser``, ``self.client``, ``self.access_log`` and ``self.access_logger``, the
request cycle's ``scope``, ``more_body``, ``keep_alive``, ``response_started``,
``response_complete``, ``disconnected`` and ``message_event``, and the ASGI scope's
``state``.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from functools import cache
from typing import Any, cast

from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from api.errors import problem
from api.limits import MAX_BODY_BYTES
from api.metrics import request_answered
from api.request_context import (
    REQUEST_ID_HEADER,
    RequestContext,
    RequestContextMiddleware,
    context_of,
    request_id_of,
    within,
)
from api.settings import Settings

# After a refusal the answer is sent, our side shut for writing, and what the client
# still sends is read and dropped for this long: closing at once would reset the
# connection and could destroy the answer before the client reads it.
LINGER_SECONDS = 1.0
# The app's own body deadline (api/limits.py) answers 408 first; this one only closes
# connections whose body nobody reads.
BODY_BACKSTOP_GRACE_SECONDS = 1.0
# The most the parser is given at once: the most a pipelined head may be overcounted.
FEED_BYTES = 4096
BUSY = "the server is at its connection limit; try again shortly"


@cache
def _settings() -> Settings:
    # Each worker process reads its settings from the environment, as app_factory does.
    return Settings()


async def _answer_busy(scope: Scope, receive: Receive, send: Send) -> None:
    busy = problem(503, BUSY, headers={"Retry-After": "1", "Connection": "close"})
    await busy(scope, receive, send)


# In place of the app: its answer has the id, timing, access line and count of any.
_busy = RequestContextMiddleware(_answer_busy)


class EdgeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = _settings()
        self._max_head_bytes = settings.max_header_bytes
        self._max_headers = settings.max_headers
        self._head_timeout = settings.header_timeout_seconds
        self._body_timeout = settings.body_timeout_seconds + BODY_BACKSTOP_GRACE_SECONDS
        # Framing and trailers included: a legitimate chunked body stays well within.
        self._max_after_head = MAX_BODY_BYTES + self._max_head_bytes
        # uvicorn's own check counts this very connection and answers in plain text:
        # ours, in connection_made, lets MAX_CONNECTIONS in and answers problem+json.
        self._max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self._app = self.app
        self._in_head = True
        self._head_bytes = 0
        self._after_head_bytes = 0
        # Within one piece fed to the parser: a head or a request ended, and after a
        # request ended, another began.
        self._ended_in_piece = self._began_after_end = False
        self._deadline: TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._max_connections is not None and len(self.connections) > self._max_connections:
            # Answered before any of it is read, so that connections past the cap cost
            # no head buffers; and not counted, so that while lingering they take no
            # place of a connection that would be served.
            self.connections.discard(self)
            self._refuse(503, BUSY, headers={"Retry-After": "1"})
            return
        # A connection that never sends a request is closed after the head timeout.
        self._arm(self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        at = 0
        while at < len(data) and (room := self._room()) > 0:
            piece = data[at : at + min(room, FEED_BYTES)]
            at += len(piece)
            self._feed(piece)
            if self._refused or self.transport.is_closing():
                return

    def _room(self) -> int:
        """What the parser may still be given of the head, or of what follows it;
        refuses the request at 0 (httptools would otherwise buffer a header value, or a
        trailer, of any length)."""
        if self._in_head:
            room = self._max_head_bytes - self._head_bytes
            if room <= 0:
                self._refuse(431, f"request heads are limited to {self._max_head_bytes} bytes")
        else:
            room = self._max_after_head - self._after_head_bytes
            if room <= 0:
                self._refuse_after_head()
        return room

    def _feed(self, piece: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(piece)
        else:
            self._after_head_bytes += len(piece)
        if self._deadline is None:
            self._arm(self._head_timeout if self._in_head else self._body_timeout)
        self._ended_in_piece = self._began_after_end = False
        super().data_received(piece)
        if self._refused or self.transport.is_closing():
            return
        if self._ended_in_piece:
            # httptools does not say where in the piece: all of it may be the start of
            # what follows (unless nothing began after a request ended).
            if not self._in_head:
                self._after_head_bytes = len(piece)
            elif self._began_after_end:
                self._head_bytes = len(piece)
        if not self._in_head and self._deadline is None:
            self._arm(self._body_timeout)  # the head ended in this piece, a body follows

    def on_message_begin(self) -> None:
        self._began_after_end = self._ended_in_piece
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        if len(self.headers) >= self._max_headers:
            self._refuse(431, f"requests are limited to {self._max_headers} headers")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._after_head_bytes = False, 0
        self._ended_in_piece = True
        self._disarm()
        over = self._max_connections is not None and (
            len(self.connections) > self._max_connections
            or len(self.tasks) >= self._max_connections
        )
        self.app = cast(ASGI3Application, _busy) if over else self._app
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        self._ended_in_piece, self._began_after_end = True, False
        super().on_message_complete()

    def shutdown(self) -> None:
        """Close idle connections (as uvicorn does), answer 503 to a request whose head
        or body is still arriving, and leave a request that has all arrived to finish."""
        if self._refused:
            return  # already answered: closed when its linger ends
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is None or cycle.response_complete:
            arriving = self._in_head and self._head_bytes > 0
            cycle = None  # (a head arriving: no app handles it yet)
        else:
            arriving = cycle.more_body and not cycle.response_started
            if arriving:
                # The app's next receive is a disconnect (Starlette raises
                # ClientDisconnect, which ends the request quietly) and whatever it
                # answers is dropped: the client has this 503.
                cycle.disconnected = True
                cycle.message_event.set()
        if arriving:
            self._refuse(
                503,
                "the server is shutting down; send the request again",
                headers={"Retry-After": "1"},
                cycle=cycle,
            )
        else:
            super().shutdown()

    def _refuse_after_head(self) -> None:
        """Past the cap on what follows a head: 413, unless the app has answered (then
        the connection closes once its answer is sent, and no more is read)."""
        cycle = self.cycle
        if cycle.response_started:
            self._refused = True
            if cycle.response_complete:
                self.transport.close()
            else:
                cycle.keep_alive = False
            return
        # As at shutdown: the app's next receive is a disconnect, its answer dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(
            413,
            f"request bodies, with their chunk framing and trailers, are limited to "
            f"{self._max_after_head} bytes",
            cycle=cycle,
        )

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes:
            self._refuse(
                408,
                f"the request head did not arrive within {self._head_timeout:g} s",
                waited=self._head_timeout,
            )
        else:
            # Never used, or a body the app did not read: nobody is waiting for an answer.
            self.transport.close()

    def _refuse(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        *,
        cycle: RequestResponseCycle | None = None,
        waited: float | None = None,
    ) -> None:
        """Answer ``status`` as problem+json, read no more requests, and close.
        ``cycle``: the request refused once its head had arrived (its app is handling
        it); ``waited``: how long its head was waited for, if not since the deadline
        was armed."""
        self._refused = True
        if waited is None:
            waited = self._head_waited()
        self._disarm()
        scope: Scope
        if cycle is not None:
            scope = cast(Scope, cycle.scope)
            context = context_of(scope)
        else:
            scope = self._head_so_far()
            context = RequestContext(request_id_of(scope), scope)
            context.started -= waited
        context.status, context.duration = status, context.elapsed()
        with within(context):
            answer = problem(
                status,
                detail,
                headers={
                    **(headers or {}),
                    REQUEST_ID_HEADER: context.request_id,
                    "Server-Timing": context.server_timing(),
                },
            )
            if self.access_log:
                self._log_access(scope, status)
        if cycle is None:
            # (A request whose head arrived is counted by the app's middleware when
            # the app is done with it: it answers the edge's status.)
            request_answered(scope, status, context.duration)
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in answer.raw_headers]
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + answer.body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _head_waited(self) -> float:
        """Seconds since the head under way was first waited for: since its first byte,
        or since the connection opened (when the head deadline was armed)."""
        if not self._in_head or self._deadline is None:
            return 0.0
        return max(0.0, self.loop.time() - (self._deadline.when() - self._head_timeout))

    def _head_so_far(self) -> Scope:
        """The scope of a head refused before it ended: the headers parsed so far (the
        X-Request-ID among them, if it came before the refusal), the method if read."""
        scope = cast(Scope | None, self.scope)
        if scope is None or "method" in scope:
            # No head begun on this connection (or this scope is a finished one's).
            return {"type": "http", "method": "-", "headers": [], "client": self.client}
        method = self.parser.get_method().decode("ascii") if self.url else "-"
        return {**scope, "method": method}

    def _log_access(self, scope: Scope, status: int) -> None:
        # uvicorn's own access line and arguments, for the same fields and format.
        self.access_logger.info(
            '%s - "%s %s HTTP/%s" %d',
            get_client_addr(cast(Any, scope)),
            scope["method"],
            get_path_with_query_string(cast(Any, scope)) if "path" in scope else "-",
            scope.get("http_version", "1.1"),
            status,
        )


__all__ = ["EdgeProtocol"]
