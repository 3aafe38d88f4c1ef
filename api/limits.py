"""Request limits enforced before any body is parsed: size, media type, nesting, time."""

from __future__ import annotations

import re

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 20.0
# Python's json recurses once per level: 30,000 "[" end in a RecursionError wherever a
# body is parsed. No task body nests past a few levels.
MAX_NESTING = 32
_METHODS_WITH_BODY = {b"POST", b"PUT", b"PATCH", b"DELETE"}
_JSON_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


class Nesting:
    """How deep a JSON text nests, read a chunk at a time as the body arrives. Only
    brackets outside strings count; the structural bytes are found by a regular
    expression, so a body is looked at in C, not byte by byte in Python."""

    def __init__(self) -> None:
        self.depth = self.deepest = 0
        self._in_string = self._escaped = False

    def feed(self, chunk: bytes) -> int:
        """Take the next chunk (UTF-8: the caller refuses NUL bytes, which every UTF-16
        or UTF-32 text has); the deepest level so far."""
        if not chunk:
            return self.deepest
        skip = 0 if self._escaped else -1  # the byte a backslash escaped
        self._escaped = False
        for match in _JSON_STRUCTURE.finditer(chunk):
            at, byte = match.start(), chunk[match.start()]
            if at == skip:
                continue
            if self._in_string:
                if byte == ord("\\"):
                    skip = at + 1
                    self._escaped = at + 1 == len(chunk)
                elif byte == ord('"'):
                    self._in_string = False
            elif byte == ord('"'):
                self._in_string = True
            elif byte in b"[{":
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)
            elif byte in b"]}":
                self.depth -= 1
        return self.deepest


class RequestLimits:
    """Answers 413 for bodies over ``max_body`` bytes (declared or streamed), 415 for a
    body that is not JSON, 400 for one nesting deeper than MAX_NESTING and 408 (closing
    the connection) for one not all there ``body_timeout`` seconds after its head, so
    the app never buffers, parses or waits for any of them. One guard for every route."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int = MAX_BODY_BYTES,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _answer(
                scope, receive, send, 413, f"request bodies are limited to {self.max_body} bytes"
            )
            return
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        has_body = length not in (None, b"0") or b"transfer-encoding" in headers
        if has_body and media_type and not _is_json(media_type):
            await _answer(scope, receive, send, 415, "send the body as application/json")
            return

        received = 0
        nesting = Nesting()
        refused: _Refused | None = None
        answered = complete = False
        # The whole body, not each read: a byte every few seconds must not keep a
        # request (and its connection) open for ever.
        deadline = anyio.current_time() + self.body_timeout

        async def counted_receive() -> Message:
            nonlocal received, refused, complete
            if complete:
                return await receive()  # after the body: a wait for the disconnect
            try:
                with anyio.fail_after(deadline - anyio.current_time()):
                    message = await receive()
            except TimeoutError:
                refused = _Refused(
                    408, f"the request body did not arrive within {self.body_timeout:g} s"
                )
                raise refused from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body:
                    refused = _Refused(413, f"request bodies are limited to {self.max_body} bytes")
                elif b"\x00" in chunk:
                    # Not UTF-8 JSON (a NUL is escaped in JSON text): UTF-16 or UTF-32,
                    # which json.loads would still take, bytes the guard cannot count.
                    refused = _Refused(400, "send the body as UTF-8 JSON")
                elif nesting.feed(chunk) > MAX_NESTING:
                    refused = _Refused(400, f"the body nests deeper than {MAX_NESTING} levels")
                if refused is not None:
                    raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if refused is None:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                # The app turned the interrupted read into an error of its own.
                answered = True
                await _answer(scope, receive, send, refused.status, refused.detail)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _Refused as refusal:
            if not answered:
                await _answer(scope, receive, send, refusal.status, refusal.detail)


def _is_json(media_type: bytes) -> bool:
    return media_type == b"application/json" or media_type.endswith(b"+json")


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await problem(status, detail, headers={"Connection": "close"})(scope, receive, send)
