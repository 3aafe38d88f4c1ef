"""Request limits enforced before any body is parsed: size and media type."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem

MAX_BODY_BYTES = 64 * 1024
_METHODS_WITH_BODY = {b"POST", b"PUT", b"PATCH", b"DELETE"}


class _TooLarge(Exception):
    pass


class RequestLimits:
    """Answers 413 for bodies over ``max_body`` bytes (declared or streamed) and 415
    for a body that is not JSON, so the app never buffers or parses either."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

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
        too_large = answered = False
        refusal = f"request bodies are limited to {self.max_body} bytes"

        async def counted_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not too_large:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                # The app turned the interrupted read into an error of its own.
                answered = True
                await _answer(scope, receive, send, 413, refusal)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            if not answered:
                await _answer(scope, receive, send, 413, refusal)


def _is_json(media_type: bytes) -> bool:
    return media_type == b"application/json" or media_type.endswith(b"+json")


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await problem(status, detail, headers={"Connection": "close"})(scope, receive, send)
