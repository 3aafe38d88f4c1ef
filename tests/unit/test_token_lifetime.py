"""Tokens have a maximum age: ``exp`` must be a number, at most JWT_MAX_TTL_SECONDS after
``iat`` (or after now without one), so that a shared-secret token cannot live forever."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from api.auth import AuthenticationFailed, TokenVerifier
from tests.support import SECRET

WEEK = 7 * 24 * 3600


def verifier(max_ttl: float = WEEK) -> TokenVerifier:
    return TokenVerifier(
        secret=SECRET, jwks=None, issuer=None, audience=None, leeway=30, max_ttl=max_ttl
    )


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", **claims}, SECRET, algorithm="HS256")


NOW = int(time.time())


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": NOW, "exp": 10**18},
        {"iat": NOW, "exp": 10**400},  # beyond any float
        {"iat": NOW, "exp": 1e300},
        {"iat": NOW, "exp": 253402300799},  # 9999-12-31
        {"iat": NOW, "exp": str(NOW + 600)},  # PyJWT alone takes a numeric string
        {"iat": str(NOW), "exp": NOW + 600},
        {"iat": NOW, "exp": NOW + WEEK + 3600},
        {"exp": NOW + WEEK + 3600},  # no iat: counted from now
        {"iat": NOW - 3600, "exp": NOW + WEEK},  # a week and an hour after its issue
    ],
    ids=[
        "1e18",
        "1e400",
        "1e300",
        "year 9999",
        "exp string",
        "iat string",
        "8 days",
        "no iat",
        "iat",
    ],
)
def test_tokens_beyond_the_maximum_lifetime_are_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(AuthenticationFailed):
        verifier().verify(token(**claims))


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": NOW, "exp": NOW + WEEK},  # the hackathon frontends' own 7-day tokens
        {"iat": NOW, "exp": NOW + 900},  # Better Auth's 15 minutes
        {"exp": NOW + 6 * 24 * 3600},
    ],
    ids=["7 days", "15 minutes", "no iat, 6 days"],
)
def test_tokens_within_the_maximum_lifetime_are_accepted(claims: dict[str, Any]) -> None:
    assert verifier().verify(token(**claims)).user_id == "alice"


def test_the_maximum_can_be_lowered() -> None:
    with pytest.raises(AuthenticationFailed, match="lifetime"):
        verifier(max_ttl=900).verify(token(iat=NOW, exp=NOW + 3600))
