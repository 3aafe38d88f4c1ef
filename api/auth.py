"""Verifying Better Auth JWTs with PyJWT: JWKS (asymmetric) and shared-secret (HS256)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt

from api.keys import ASYMMETRIC_ALGORITHMS, JwksKeys, KeyNotInSet, KeysUnavailable

# KeysUnavailable is raised through here (answered 503 by api/errors.py).
__all__ = ["AuthenticationFailed", "KeysUnavailable", "Principal", "TokenVerifier"]

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192


class AuthenticationFailed(Exception):
    """No valid token: answered 401. The message is safe to show the client; ``why``,
    logged at info, says it in words a developer can act on (never the token)."""

    def __init__(self, message: str, why: str | None = None) -> None:
        super().__init__(message)
        self.why = why


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    roles: frozenset[str]
    expires_at: float


class TokenVerifier:
    """Turns a bearer token into a Principal, or refuses it.

    A token is tried against one mode, chosen by its ``alg`` header: HS256 against
    the shared secret, the asymmetric algorithms against the JWKS. Anything else
    (``none`` included) is refused.
    """

    def __init__(
        self,
        *,
        secret: str | None,
        jwks: JwksKeys | None,
        issuer: str | None,
        audience: str | None,
        leeway: float,
        max_ttl: float = 7 * 24 * 3600,
        cache_size: int = 4096,
    ) -> None:
        self._secret = secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._max_ttl = max_ttl
        # Verified tokens, so that a client's repeated requests skip the signature check.
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        """The token's principal, waiting on this thread for a key fetch if one is needed
        (for callers off the event loop)."""
        cached = self.known(token)
        if cached is not None:
            return cached
        algorithm, kid = self._read_header(token)
        with _refusing_unknown_keys():
            key = self._secret if kid is None else self._key_set().key_for(kid)
        return self._remember(token, self._decode(token, key, algorithm))

    async def verify_async(self, token: str) -> Principal:
        """The same, awaiting a key fetch without holding a thread. Nothing else here
        waits: a signature check takes well under a millisecond, done on the loop."""
        cached = self.known(token)
        if cached is not None:
            return cached
        algorithm, kid = self._read_header(token)
        with _refusing_unknown_keys():
            key = self._secret if kid is None else await self._key_set().key_for_async(kid)
        return self._remember(token, self._decode(token, key, algorithm))

    def known(self, token: str) -> Principal | None:
        """The principal of a token verified before and not expired since (None: not
        known): no signature check, no key fetch."""
        with self._cache_lock:
            principal = self._verified.get(token)
            if principal is None:
                return None
            if time.time() > principal.expires_at + self._leeway:
                del self._verified[token]
                return None
            self._verified.move_to_end(token)
            return principal

    def _remember(self, token: str, principal: Principal) -> Principal:
        with self._cache_lock:
            self._verified[token] = principal
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return principal

    def _key_set(self) -> JwksKeys:
        if self._jwks is None:  # _read_header names a kid only when there is a key set
            raise AuthenticationFailed("token algorithm not accepted")
        return self._jwks

    def _read_header(self, token: str) -> tuple[str, str | None]:
        """The token's algorithm, and the ``kid`` to look up (None: the shared secret)."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationFailed("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise AuthenticationFailed("token algorithm not accepted")
        if algorithm == "HS256" and self._secret is not None:
            return algorithm, None
        if algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise AuthenticationFailed("token has no key id")
            return algorithm, kid
        # The two misconfigurations met most: Better Auth's EdDSA tokens sent to a
        # service told only the secret, and shared-secret tokens to one told only the URL.
        if algorithm in ASYMMETRIC_ALGORITHMS:
            raise AuthenticationFailed(
                "token algorithm not accepted: JWKS mode is off",
                f"{algorithm} token but JWKS mode is off: set BETTER_AUTH_URL",
            )
        if algorithm == "HS256":
            raise AuthenticationFailed(
                "token algorithm not accepted: shared-secret mode is off",
                "HS256 token but shared-secret mode is off: set BETTER_AUTH_SECRET",
            )
        raise AuthenticationFailed("token algorithm not accepted")

    def _decode(self, token: str, key: Any, algorithm: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("token expired") from None
        except jwt.InvalidIssuerError:
            # Checked after the signature: the claim is the signer's.
            issued_by = _claim(token, "iss")
            raise AuthenticationFailed(
                "token issuer not accepted",
                f"issuer {issued_by} is not the expected {self._issuer}",
            ) from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed(
                "token audience not accepted",
                f"audience {_claim(token, 'aud')} is not the expected {self._audience}",
            ) from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthenticationFailed(f"token has no {error.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationFailed(
                "invalid token signature",
                f"the {algorithm} signature does not verify: signed with another "
                + ("secret than BETTER_AUTH_SECRET" if algorithm == "HS256" else "key"),
            ) from None
        except jwt.PyJWTError:
            raise AuthenticationFailed("invalid token") from None
        except Exception as error:
            # A token PyJWT chokes on is still just an invalid token, never a 500.
            log.warning("token verification raised %s", type(error).__name__)
            raise AuthenticationFailed("invalid token") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthenticationFailed("invalid token subject")
        expires_at = self._expiry(claims)
        return Principal(
            user_id=subject,
            roles=frozenset(_roles(claims.get("role"))),
            expires_at=expires_at,
        )

    def _expiry(self, claims: dict[str, Any]) -> float:
        """``exp``, if it is a number no further than the maximum lifetime from ``iat``
        (or from now): PyJWT takes "9999999999" or 1e300 alike, and a shared-secret
        token could otherwise live forever."""
        expires_at, issued_at = claims["exp"], claims.get("iat", time.time())
        if not (_is_number(expires_at) and _is_number(issued_at)):
            raise AuthenticationFailed("invalid token expiry")
        if float(expires_at) - float(issued_at) > self._max_ttl:
            raise AuthenticationFailed("token lifetime exceeds the maximum accepted")
        return float(expires_at)


@contextmanager
def _refusing_unknown_keys() -> Iterator[None]:
    try:
        yield
    except KeyNotInSet as refused:
        raise AuthenticationFailed(str(refused)) from None


def _claim(token: str, name: str) -> str:
    """A claim of a token whose signature verified, fit for a log line."""
    try:
        value = jwt.decode(token, options={"verify_signature": False}).get(name)
    except jwt.PyJWTError:
        return "(unreadable)"
    # Printable text as it is; anything else (control characters) escaped.
    text = value if isinstance(value, str) and value.isprintable() else ascii(value)
    return text[:200]


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _roles(claim: object) -> Iterable[str]:
    # Better Auth's admin plugin keeps several roles as one comma-separated string.
    if isinstance(claim, str):
        return (role.strip() for role in claim.split(","))
    if isinstance(claim, list):
        return (role for role in claim if isinstance(role, str))
    return ()
