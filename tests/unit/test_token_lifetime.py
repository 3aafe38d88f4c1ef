"""Tokens have a maximum age: ``exp`` must be a number, at most JWT_MAX_TTL_SECONDS after
``iat`` (or after now without one), so that a shared-secret token cannot live forever."""

from __future__ import annotations

import time
from collections.abc import Callable
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


# Each case is a function of the moment the test runs, not of collection time: the whole
# suite outlasts a 15-minute token, so a moment taken at collection would expire.
Claims = Callable[[int], dict[str, Any]]


@pytest.mark.parametrize(
    "claims",
    [
        lambda now: {"iat": now, "exp": 10**18},
        lambda now: {"iat": now, "exp": 10**400},  # beyond any float
        lambda now: {"iat": now, "exp": 1e300},
        lambda now: {"iat": now, "exp": 253402300799},  # 9999-12-31
        lambda now: {"iat": now, "exp": str(now + 600)},  # PyJWT alone takes a numeric string
        lambda now: {"iat": str(now), "exp": now + 600},
        lambda now: {"iat": now, "exp": now + WEEK + 3600},
        lambda now: {"exp": now + WEEK + 3600},  # no iat: counted from now
        lambda now: {"iat": now - 3600, "exp": now + WEEK},  # a week and an hour after issue
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
def test_tokens_beyond_the_maximum_lifetime_are_refused(claims: Claims) -> None:
    with pytest.raises(AuthenticationFailed):
        verifier().verify(token(**claims(int(time.time()))))


@pytest.mark.parametrize(
    "claims",
    [
        lambda now: {"iat": now, "exp": now + WEEK},  # the hackathon frontends' 7-day tokens
        lambda now: {"iat": now, "exp": now + 900},  # Better Auth's 15 minutes
        lambda now: {"exp": now + 6 * 24 * 3600},
    ],
    ids=["7 days", "15 minutes", "no iat, 6 days"],
)
def test_tokens_within_the_maximum_lifetime_are_accepted(claims: Claims) -> None:
    assert verifier().verify(token(**claims(int(time.time())))).user_id == "alice"


def test_the_maximum_can_be_lowered() -> None:
    now = int(time.time())
    with pytest.raises(AuthenticationFailed, match="lifetime"):
        verifier(max_ttl=900).verify(token(iat=now, exp=now + 3600))
