"""The hottest write, a plain create, answered without FastAPI's routing.

Issue 14's profile of creates on PostgreSQL: FastAPI solving the route's dependencies
and reading its body took 15% of the process's time, and its routing and exception
layers another 4%: as much as the command and its save. This ASGI layer answers
``POST /api/{user_id}/tasks`` itself when the route would answer it from the same
reading: the caller's own, already verified token, a JSON body that ``TaskCreate``
takes, one well-formed Idempotency-Key or none. It answers through the route's own
code (``api.routes.created``); a command that fails is answered by the app's own
handlers (``api.errors.handler_for``), as the route's failure would be.

Everything else goes on to FastAPI untouched, with the body read here given back
first: a first-seen token, another user's path, a body the schema refuses, a header
the route reads otherwise. So the route stays the one place that validates, refuses
and explains; this is a shortcut for requests it would take.
"""

from __future__ import annotations

import json
import re
from collections import deque

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import keyed_request
from api.errors import handler_for
from api.known_caller import own_request
from api.routes import created
from api.schemas import TaskCreate
from api.services import Services
from write_side import USER_ID_PATTERN

_PATH = re.compile(r"/api/([^/]+)/tasks")
_USER_ID = re.compile(USER_ID_PATTERN)
# The route's own bounds on the header (api/deps.py request_key).
_KEY = re.compile(rb"[\x21-\x7e]{1,255}")
_REPEATED = b""  # a header sent twice: read by the route


class PlainCreates:
    """ASGI: plain creates by their own user answered here; the rest passed on."""

    def __init__(self, app: ASGIApp, services: Services, route: BaseRoute) -> None:
        self.app = app
        self.services = services
        # Written into the scope, as routing would: the access log and the metrics
        # name the route's template.
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        matched = _PATH.fullmatch(scope["path"])
        if (
            matched is None
            or not _USER_ID.fullmatch(user_id := matched.group(1))
            or not own_request(self.services, scope, user_id)
        ):
            await self.app(scope, receive, send)
            return
        received, body = await _body(receive)
        asked = None if body is None else _plain_create(scope, body)
        # Asked again: the token may have expired while the body arrived (the route
        # verifies it once the body is read).
        if body is None or asked is None or not own_request(self.services, scope, user_id):
            await self.app(scope, _given_back(received, receive), send)
            return
        task, key = asked
        scope["route"] = self.route
        scope["path_params"] = {"user_id": user_id}
        path = URL(scope=scope).path
        request_key = None if key is None else keyed_request(key, "POST", path, body)
        try:
            response = await created(self.services, user_id, task, request_key)
        except Exception as error:
            handler = handler_for(error)
            if handler is None:
                raise  # a 500, answered as the route's would be
            response = await handler(Request(scope), error)
        await response(scope, receive, send)


async def _body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages received up to the body's end, and the body (None: the client
    left first). The limits outside (api/limits.py) bound its size and time."""
    received: list[Message] = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return received, None
        if not message.get("more_body", False):
            return received, b"".join(m.get("body", b"") for m in received)


def _given_back(received: list[Message], receive: Receive) -> Receive:
    """``receive`` with the messages already read from it given first."""
    pending = deque(received)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay


def _plain_create(scope: Scope, body: bytes) -> tuple[TaskCreate, str | None] | None:
    """The task a request asks to create, and its Idempotency-Key, when the route
    would read them the same way (None: the route's to read, or to refuse)."""
    media_type = key = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = _REPEATED if media_type is not None else value
        elif name == b"idempotency-key":
            key = _REPEATED if key is not None else value
    # Exactly one of each, and one JSON media type (the route's reading of others,
    # and of repeated headers, is its own).
    if media_type is None or media_type.split(b";")[0].strip().lower() != b"application/json":
        return None
    if key is not None and not _KEY.fullmatch(key):
        return None
    try:
        task = TaskCreate.model_validate(json.loads(body))
    except Exception:
        # Refused (ValueError, RecursionError, ValidationError), or failed: either is
        # the route's to answer, by its own reading.
        return None
    return task, None if key is None else key.decode("ascii")
