"""Verifying Better Auth JWTs with PyJWT: JWKS (asymmetric) and shared-secret (HS256)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "RS256", "PS256"})
MAX_TOKEN_LENGTH = 8192


class AuthenticationFailed(Exception):
    """No valid token: answered 401. The message is safe to show the client."""


class KeysUnavailable(Exception):
    """The key set could not be fetched and no cached key fits: answered 503."""


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    roles: frozenset[str]
    expires_at: float


class JwksKeys:
    """The auth server's public keys, fetched once and cached.

    Refreshed when older than ``max_age``, or when a token names an unknown ``kid``
    (a rotated key works on its first use), but never more often than once per
    ``cooldown``, so a flood of made-up ``kid``s cannot hammer the auth server.
    A failed refresh keeps the keys already known: tokens keep verifying while the
    auth server is down. Only a request whose key is unknown waits for a fetch;
    one with a known (even stale) key never queues behind a slow auth server.
    """

    def __init__(self, url: str, *, max_age: float, cooldown: float, timeout: float = 5):
        # Only used to fetch: it refuses redirects and non-http(s) schemes.
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        self._max_age = max_age
        self._cooldown = cooldown
        # Replaced whole on each successful fetch, so readers need no lock.
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._last_fetch_failed = False
        self._fetch_lock = threading.Lock()
        self.fetches = 0

    def key_for(self, kid: str) -> PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            if time.monotonic() - self._fetched_at <= self._max_age:
                return key
            # Stale: one request refreshes (if due) while the others use the known key.
            if self._fetch_lock.acquire(blocking=False):
                try:
                    self._refresh_if_due()
                finally:
                    self._fetch_lock.release()
            if self._last_fetch_failed or kid in self._keys:
                return self._keys.get(kid, key)
            raise AuthenticationFailed("token signed with a withdrawn key")
        # Unknown: wait for a fetch under way, then fetch again unless one just ran.
        with self._fetch_lock:
            self._refresh_if_due()
            key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys or self._last_fetch_failed:
            # Perhaps a key rotated in that cannot be fetched now: retry, don't sign out.
            raise KeysUnavailable("signing keys unavailable")
        raise AuthenticationFailed("token signed with an unknown key")

    def _refresh_if_due(self) -> None:
        now = time.monotonic()
        if now - self._attempted_at < self._cooldown:
            return
        self._attempted_at = now
        self.fetches += 1
        try:
            key_set = PyJWKSet.from_dict(self._client.fetch_data())
        except Exception as error:  # network, JSON, or key parsing: keep what we have
            log.warning("fetching the JWKS failed: %s", type(error).__name__)
            self._last_fetch_failed = True
            return
        self._keys = {
            key.key_id: key
            for key in key_set.keys
            if isinstance(key.key_id, str)
            and key.key_id
            and key.algorithm_name in ASYMMETRIC_ALGORITHMS
            and key.public_key_use in ("sig", None)
        }
        self._fetched_at = now
        self._last_fetch_failed = False


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
        cached = self._cached(token)
        if cached is not None:
            return cached
        principal = self._verify(token)
        with self._cache_lock:
            self._verified[token] = principal
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return principal

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired; no I/O."""
        return self._cached(token)

    def _cached(self, token: str) -> Principal | None:
        with self._cache_lock:
            principal = self._verified.get(token)
            if principal is None:
                return None
            if time.time() > principal.expires_at + self._leeway:
                del self._verified[token]
                return None
            self._verified.move_to_end(token)
            return principal

    def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationFailed("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise AuthenticationFailed("token algorithm not accepted")
        key: Any
        if algorithm == "HS256" and self._secret is not None:
            key = self._secret
        elif algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise AuthenticationFailed("token has no key id")
            key = self._jwks.key_for(kid)
        else:
            raise AuthenticationFailed("token algorithm not accepted")
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
