"""Every error leaves as application/problem+json (RFC 9457), mapped here once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

from eventsourcing import persistence
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sqlalchemy_errors
from starlette.exceptions import HTTPException
from starlette.routing import Match

from api.auth import AuthenticationFailed, KeysUnavailable
from api.request_context import REQUEST_ID_HEADER
from api.request_context import current as current_request
from api.services import NotStarted, ReadModelUnavailable
from read_side.runtime.engine import is_unreadable
from write_side import (
    ConcurrencyExhausted,
    IdempotencyKeyReused,
    InvalidTask,
    TaskNotFound,
    TaskVersionMismatch,
    VersionNotReached,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_ERRORS = 20
_TYPE_BASE = "https://taskledger.dev/problems/"


class Forbidden(Exception):
    """Authenticated, but this principal may not do this."""


class TokenMissing(AuthenticationFailed):
    """No bearer token at all (as opposed to one that fails verification)."""


def problem(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json answer; within a request, its body names the request's id (the
    one in X-Request-ID and in its log lines), for a user's report to be found."""
    phrase = HTTPStatus(status).phrase
    body = {
        "type": _TYPE_BASE + phrase.lower().replace(" ", "-"),
        "title": phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    if (context := current_request()) is not None:
        body["request_id"] = context.request_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def invalid_query(field: str, value: object, message: str) -> RequestValidationError:
    """A query parameter refused after FastAPI's own validation: the same 422 as its."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": value}]
    )


def _location(loc: tuple[Any, ...]) -> str:
    # ("body", "title") -> "title"; ("query", "limit") -> "limit"; ("body", "tags", 0)
    # -> "tags.0". A repeated parameter is one name to its sender: ("query", "tag", 1)
    # -> "tag".
    if len(loc) > 1 and loc[0] in ("query", "header", "path"):
        return str(loc[1])
    parts = [str(part) for part in loc[1:]] or [str(part) for part in loc]
    return ".".join(parts)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem(400, "the request body is not valid JSON")
    fields = [
        {"field": _location(tuple(error.get("loc", ()))), "message": error.get("msg", "")}
        for error in errors[:MAX_ERRORS]
    ]
    detail = "the request is not valid"
    if len(errors) > MAX_ERRORS:
        # A body of thousands of bad keys must not earn an answer several times its size.
        detail += f" ({MAX_ERRORS} of its {len(errors)} errors are listed)"
    return problem(422, detail, errors=fields)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(HTTPException, exc)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route on this path only; the
        # resource has one route per method, and RFC 9110 wants them all.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    # Each method is tried on the app's routes (included routers answer matches() too,
    # while they hide their routes' methods).
    routes = request.app.router.routes
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def _unauthenticated(_: Request, exc: Exception) -> JSONResponse:
    # RFC 6750 §3.1: a request that sent no credentials gets a bare challenge;
    # only a token that was sent and refused earns error="invalid_token".
    challenge = "Bearer" if isinstance(exc, TokenMissing) else 'Bearer error="invalid_token"'
    why = getattr(exc, "why", None)
    log.info("token refused: %s", why or exc)
    return problem(401, str(exc), headers={"WWW-Authenticate": challenge})


async def _forbidden(_: Request, exc: Exception) -> JSONResponse:
    return problem(403, str(exc) or "not allowed")


async def _key_reused(_: Request, exc: Exception) -> JSONResponse:
    detail = "this Idempotency-Key was already used for a different request"
    return problem(422, detail, errors=[{"field": "Idempotency-Key", "message": detail}])


async def _version_mismatch(_: Request, exc: Exception) -> JSONResponse:
    exc = cast(TaskVersionMismatch, exc)
    return problem(
        412,
        f"the task has changed since that version: it is now at version {exc.current}",
        headers={"ETag": f'"{exc.current}"'},
    )


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return problem(404, "task not found")


async def _version_not_reached(_: Request, exc: Exception) -> JSONResponse:
    detail = str(exc)
    return problem(422, detail, errors=[{"field": "at_version", "message": detail}])


async def _invalid_task(_: Request, exc: Exception) -> JSONResponse:
    # The domain names the field at fault when it is one ("body": several, or the whole).
    field = cast(InvalidTask, exc).field
    return problem(422, str(exc), errors=[{"field": field, "message": str(exc)}])


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("service unavailable: %s", type(exc).__name__)
    detail = {
        KeysUnavailable: "the token's signing keys cannot be fetched right now",
        ConcurrencyExhausted: "too many concurrent changes to these tasks; retry",
        NotStarted: "the service is starting; retry shortly",
    }.get(type(exc), "the database is unavailable; retry shortly")
    retry_after = exc.retry_after if isinstance(exc, KeysUnavailable) else 1
    return problem(503, detail, headers={"Retry-After": str(retry_after)})


async def _read_model_unavailable(_: Request, exc: Exception) -> JSONResponse:
    detail = f"task reads are unavailable while the read tables are repaired: {exc}; retry shortly"
    return problem(503, detail, headers={"Retry-After": "2"})


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_unreadable(exc):
        return await _internal(request, exc)
    # Damaged read tables: this process stops serving them at once (the projector's
    # leader rebuilds them), rather than answering 500 to every listing.
    request.app.state.services.read_model_unreadable(exc)
    return await _read_model_unavailable(request, ReadModelUnavailable("they cannot be read"))


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal error")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    answer = await _internal(request, exc)
    # Starlette sends this answer outside every middleware: it names its id and its
    # timing itself.
    if (context := current_request()) is not None:
        answer.headers[REQUEST_ID_HEADER] = context.request_id
        answer.headers["Server-Timing"] = context.server_timing()
    return answer


Handler = Callable[[Request, Exception], Awaitable[Response]]

# The problems a request's known failures answer, by the failure's class.
_HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: _validation,
    HTTPException: _http,
    AuthenticationFailed: _unauthenticated,
    Forbidden: _forbidden,
    TaskNotFound: _not_found,
    TaskVersionMismatch: _version_mismatch,
    IdempotencyKeyReused: _key_reused,
    InvalidTask: _invalid_task,
    VersionNotReached: _version_not_reached,
    ReadModelUnavailable: _read_model_unavailable,
    sqlalchemy_errors.DatabaseError: _database_error,
    **dict.fromkeys(
        (
            KeysUnavailable,
            NotStarted,
            ConcurrencyExhausted,
            # The database is down, restarting or out of connections: worth a retry.
            persistence.OperationalError,
            persistence.InterfaceError,
            sqlalchemy_errors.OperationalError,
            sqlalchemy_errors.InterfaceError,
            sqlalchemy_errors.TimeoutError,
        ),
        _unavailable,
    ),
}


def install_error_handlers(app: FastAPI) -> None:
    for failure, handler in _HANDLERS.items():
        app.add_exception_handler(failure, handler)
    # Anything else is a 500, answered by Starlette outside every middleware.
    app.add_exception_handler(Exception, _unhandled)


def handler_for(error: Exception) -> Handler | None:
    """The handler the app answers ``error`` with, as Starlette finds it (by the
    error's classes, nearest first); None for an unexpected error (a 500)."""
    for cls in type(error).__mro__:
        if (handler := _HANDLERS.get(cls)) is not None:
            return handler
    return None


# The headers the handlers above always send with these problems.
_PROBLEM_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'The bearer challenge (RFC 6750): `Bearer` or `Bearer error="…"`',
            "required": True,
            "schema": {"type": "string", "pattern": "^Bearer"},
        }
    },
    412: {
        "ETag": {
            "description": "The task's current version",
            "required": True,
            "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            **({"headers": _PROBLEM_HEADERS[status]} if status in _PROBLEM_HEADERS else {}),
        }
        for status in statuses
    }
