"""The caller of a request, when its token is one already verified.

The shortcuts before routing (api/plain_lists.py, api/plain_creates.py) answer only
for such a caller, on their own tasks: a first-seen token (whose keys may have to be
fetched), a refused one, another user's path (a 403, or an auditor's read that is
logged) are the routes' to verify, refuse and explain.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from api.request_context import note_user
from api.services import Services


def own_request(services: Services, scope: Scope, user_id: str) -> bool:
    """Whether the request's token is one already verified, of ``user_id`` (noted as
    the request's user if so), and the service is serving."""
    verifier = services.verifier
    token = bearer_token(scope)
    if verifier is None or token is None or services.health.fault is not None:
        return False
    principal = verifier.known(token)
    if principal is None or principal.user_id != user_id:
        return False
    note_user(user_id)
    return True


def bearer_token(scope: Scope) -> str | None:
    """The token of a single ``Authorization: Bearer <token>`` header (None: anything
    else, left to the route's own refusals)."""
    found: Any = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                return None
            found = value
    if found is None:
        return None
    scheme, _, token = found.partition(b" ")
    if scheme.lower() != b"bearer" or not token or b" " in token:
        return None
    try:
        return str(token.decode("ascii"))
    except UnicodeDecodeError:
        return None
