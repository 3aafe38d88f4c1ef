"""Request dependencies, declared once as Annotated aliases.

They are ``async`` because they do no blocking I/O: a plain ``def`` dependency would
cost each request a round trip through the thread pool. A first-seen token may need
the JWKS fetched: that is awaited, so a slow auth server holds no route thread.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Header, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Principal
from api.errors import Forbidden, TokenMissing
from api.logs import audit_read
from api.request_context import note_user
from api.services import NotStarted, Services
from write_side import USER_ID_MAX_LENGTH, USER_ID_PATTERN, RequestKey
from write_side.application import Guards

_bearer = HTTPBearer(auto_error=False, description="A JWT issued by Better Auth")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]

# The dependencies every request solves take the Request rather than ServicesDep:
# each level of sub-dependency costs FastAPI more than the work it does here.


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise TokenMissing("a bearer token is required")
    verifier = services_of(request).verifier
    if verifier is None:
        raise NotStarted("the service is starting")
    principal = await verifier.verify_async(credentials.credentials)
    note_user(principal.user_id)
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]
UserIdPath = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        min_length=1,
        max_length=USER_ID_MAX_LENGTH,
        description="Better Auth user id",
    ),
]


async def readable_user(user_id: UserIdPath, principal: PrincipalDep, request: Request) -> str:
    """The path's user, if the caller is that user or an auditor (whose every read of
    another user's data is logged)."""
    if principal.user_id != user_id:
        if not principal.roles & set(services_of(request).settings.auditor_roles):
            raise Forbidden("these tasks belong to another user")
        route = request.scope.get("route")
        operation = getattr(route, "name", None) or request.url.path
        audit_read(principal.user_id, user_id, operation, request.query_params.multi_items())
    return user_id


async def writable_user(user_id: UserIdPath, principal: PrincipalDep) -> str:
    """The path's user, if the caller is that user: nobody writes another's tasks."""
    if principal.user_id != user_id:
        raise Forbidden("these tasks belong to another user")
    return user_id


ReadableUser = Annotated[str, Depends(readable_user)]
WritableUser = Annotated[str, Depends(writable_user)]


async def task_id_path(
    task_id: Annotated[
        str,
        Path(
            description="The task's id; one that is not a UUID is as unknown as any other",
            json_schema_extra={"format": "uuid"},
        ),
    ],
) -> UUID:
    # Clients written against backends with integer ids probe /tasks/99999 and expect
    # 404: an id that cannot exist is not found, not a malformed request.
    try:
        return UUID(task_id)
    except ValueError:
        raise HTTPException(404, "task not found") from None


TaskId = Annotated[UUID, Depends(task_id_path)]


async def if_match_versions(
    if_match: Annotated[
        str | None,
        Header(
            description='Only change the task if it is at this version (its ETag, e.g. "3")',
            max_length=1024,
        ),
    ] = None,
) -> frozenset[int] | None:
    """The versions an If-Match header allows; None when any version will do."""
    if if_match is None or if_match.strip() == "*":
        return None
    # Strong comparison (RFC 9110): weak or malformed tags match no version.
    return frozenset(
        int(tag[1:-1])
        for tag in (part.strip() for part in if_match.split(","))
        if len(tag) > 2 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit()
    )


IfMatch = Annotated[frozenset[int] | None, Depends(if_match_versions)]


async def request_key(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Repeat-safe retries: a repeat with this key answers the first "
            "response and changes nothing (keys live 24 hours, per user)",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
        ),
    ] = None,
) -> RequestKey | None:
    if idempotency_key is None:
        return None
    return keyed_request(idempotency_key, request.method, request.url.path, await request.body())


def keyed_request(key: str, method: str, path: str, body: bytes) -> RequestKey:
    """An Idempotency-Key with what it was sent with. The same request is the same
    method, path and JSON body, however it is spaced."""
    try:
        canonical = (
            json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")) if body else ""
        )
    except (ValueError, RecursionError):
        canonical = body.decode("utf-8", "replace")
    digest = hashlib.sha256(f"{method} {path}\n{canonical}".encode())
    return RequestKey(key, digest.hexdigest())


IdempotencyKey = Annotated[RequestKey | None, Depends(request_key)]


async def write_guards(if_version: IfMatch, request: IdempotencyKey) -> Guards:
    """What a write on a task is sent with: If-Match and Idempotency-Key."""
    return {"if_version": if_version, "request": request}


WriteGuards = Annotated[Guards, Depends(write_guards)]
