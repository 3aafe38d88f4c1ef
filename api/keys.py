"""The auth server's signing keys (its JWKS), fetched so that no request is stalled by it.

A fetch runs on a thread of its own, bounded as a whole (connect, headers and body
within ``fetch_timeout``; at most ``max_bytes`` read), so a server that hangs,
dribbles or sends a huge body costs one thread for a few seconds and nothing else.
Requests that need it wait on the fetch's future, from the event loop or a thread,
and hold no route thread meanwhile; requests whose key is known never wait at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from jwt import PyJWK, PyJWKSet

from api import metrics

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "RS256", "PS256"})
_REQUEST_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}
# Time allowed for the fetch thread to start and for a waiter to be woken.
_SCHEDULING_MARGIN = 1.0


class KeysUnavailable(Exception):
    """The key set could not be fetched and no cached key fits: answered 503."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyNotInSet(Exception):
    """A fetched key set does not hold the token's key: the token is refused (401)."""


class FetchFailed(Exception):
    """The auth server's answer is not a usable key set."""


async def fetch_key_set(url: str, *, timeout: float, max_bytes: int) -> dict[str, Any]:
    """The JSON object at ``url``, all of it read within ``timeout`` seconds.

    httpx's own timeouts bound each socket operation, not the whole: the outer
    ``asyncio.timeout`` is what cuts off a server sending a byte every few seconds.
    Redirects are not followed, and the body is read no further than ``max_bytes``.
    """
    async with asyncio.timeout(timeout):
        async with (
            httpx.AsyncClient(follow_redirects=False, timeout=timeout) as client,
            # Uncompressed: a compressed chunk could expand far past the cap at once.
            client.stream("GET", url, headers=_REQUEST_HEADERS) as response,
        ):
            if response.status_code != 200:
                raise FetchFailed(f"answered {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchFailed(f"a body of {declared} bytes")
            decoder = _decoder(response.headers.get("Content-Encoding", ""))
            body = bytearray()
            # Raw bytes, decoded here: httpx would inflate a whole chunk before the cap
            # is checked (64 KiB of gzip can hold 64 MB of zeros).
            async for chunk in response.aiter_raw():
                body += decoder.decompress(chunk, max_bytes + 1 - len(body)) if decoder else chunk
                if len(body) > max_bytes:
                    raise FetchFailed(f"a body over {max_bytes} bytes")
    document = json.loads(bytes(body))
    if not isinstance(document, dict):
        raise FetchFailed("not a JSON object")
    return document


def _decoder(encoding: str) -> Any:
    """A decompressor for a server that compresses though asked not to, or None."""
    match encoding.strip().lower():
        case "" | "identity":
            return None
        case "gzip" | "x-gzip":
            return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        case "deflate":
            return zlib.decompressobj()
        case other:
            raise FetchFailed(f"an answer in the {other!r} encoding")


@dataclass(eq=False)
class _Round:
    """One fetch, shared by all who wait for it: it starts as soon as the cooldown
    allows, on a thread of its own."""

    done: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    started_at: float = math.inf
    # True until its fetch has succeeded (so a round that never ran counts as failed).
    failed: bool = True

    def __post_init__(self) -> None:
        # A waiter that gives up (or is cancelled) must not cancel it for the others.
        self.done.set_running_or_notify_cancel()


@dataclass(frozen=True)
class _Wait:
    """A request waiting for a round: what it needs, and what it may fall back on."""

    kid: str
    arrived: float
    deadline: float
    stale_key: PyJWK | None
    round: _Round


class JwksKeys:
    """The auth server's public keys, fetched once and cached.

    Refreshed when older than ``max_age``, or when a token names an unknown ``kid``,
    never more often than once per ``cooldown``: a flood of made-up ``kid``s causes
    at most one fetch per cooldown. A ``kid`` not yet known waits for the next fetch
    that starts after the request arrived (at most the cooldown away, shared by all
    waiters), so a rotated key works on its first use. A failed fetch keeps the keys
    already known: tokens keep verifying while the auth server is down.
    """

    def __init__(
        self,
        url: str,
        *,
        max_age: float,
        cooldown: float,
        fetch_timeout: float = 3,
        max_bytes: int = 2**20,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("the JWKS URL must be http or https")
        self._url = url
        self._max_age = max_age
        self._cooldown = cooldown
        self._fetch_timeout = fetch_timeout
        self._max_bytes = max_bytes
        # Guards the fields below; held for a few statements, never during a fetch.
        self._lock = threading.Lock()
        # Replaced whole on each successful fetch.
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = -math.inf
        self._last_started = -math.inf
        # The one fetch waiting for the cooldown or under way, if any.
        self._pending: _Round | None = None
        # The last fetch failed or gave no usable key: unknown kids are answered 503.
        self._unusable = False
        self.fetches = 0

    @property
    def wait_bound(self) -> float:
        """The longest a request waits for keys: a fetch under way, the cooldown after
        it, then its own fetch."""
        return max(self._cooldown, self._fetch_timeout) + self._fetch_timeout + _SCHEDULING_MARGIN

    def key_for(self, kid: str) -> PyJWK:
        """The key, waiting on this thread if it must be fetched (for callers off the
        event loop)."""
        found = self._begin(kid)
        while isinstance(found, _Wait):
            try:
                found.round.done.result(timeout=max(0.0, found.deadline - time.monotonic()))
            except TimeoutError:
                return self._gave_up(found)
            found = self._after(found)
        return found

    async def key_for_async(self, kid: str) -> PyJWK:
        """The key, awaiting its fetch without holding a thread."""
        found = self._begin(kid)
        while isinstance(found, _Wait):
            try:
                await asyncio.wait_for(
                    asyncio.wrap_future(found.round.done),
                    timeout=max(0.0, found.deadline - time.monotonic()),
                )
            except TimeoutError:
                return self._gave_up(found)
            found = self._after(found)
        return found

    # Deciding, under the lock ------------------------------------------------------

    def _begin(self, kid: str) -> PyJWK | _Wait:
        now = time.monotonic()
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                if now - self._fetched_at <= self._max_age:
                    return key
                # Stale: the request that finds a refresh due waits for it (a withdrawn
                # key is then refused); the others meanwhile use the known key.
                if self._pending is not None or now - self._last_started < self._cooldown:
                    return key
            elif (
                self._unusable
                and self._pending is None
                and now - self._last_started < self._cooldown
            ):
                # The last fetch failed and the next may not start yet: no use waiting.
                raise self._unavailable()
            return _Wait(kid, now, now + self.wait_bound, key, self._next_round())

    def _after(self, wait: _Wait) -> PyJWK | _Wait:
        """What the round waited for decided, or the next round to wait for."""
        with self._lock:
            key = self._keys.get(wait.kid)
            if wait.stale_key is not None:
                if wait.round.failed:
                    return wait.stale_key
                if key is None:
                    raise KeyNotInSet("token signed with a withdrawn key")
                return key
            if key is not None:
                return key
            if self._unusable or wait.round.failed:
                # Perhaps a key rotated in that cannot be fetched now: retry, don't sign out.
                raise self._unavailable()
            if wait.round.started_at >= wait.arrived:
                raise KeyNotInSet("token signed with an unknown key")
            # That fetch began before this request arrived, perhaps before its key was
            # published: the next one decides.
            return replace(wait, round=self._next_round())

    def _gave_up(self, wait: _Wait) -> PyJWK:
        if wait.stale_key is not None:
            return wait.stale_key
        with self._lock:
            raise self._unavailable()

    def _unavailable(self) -> KeysUnavailable:
        next_fetch = self._last_started + self._cooldown - time.monotonic()
        return KeysUnavailable(
            "signing keys unavailable", retry_after=max(1, math.ceil(next_fetch))
        )

    def _next_round(self) -> _Round:
        """The pending round, else a new one: one at a time, however many ``kid``s wait.

        A round under way is joined even if it began before the caller arrived: most
        often it has the key, and ``_after`` waits for the next round when it does not.
        """
        if self._pending is None:
            round_ = _Round()
            thread = threading.Thread(target=self._run, args=(round_,), name="jwks-fetch")
            thread.daemon = True  # a fetch is bounded, but must not delay an exit
            try:
                thread.start()
            except RuntimeError:  # out of threads: answered 503 rather than waited for
                raise self._unavailable() from None
            self._pending = round_
        return self._pending

    # Fetching, on the round's own thread --------------------------------------------

    def _run(self, round_: _Round) -> None:
        try:
            with self._lock:
                delay = self._last_started + self._cooldown - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._lock:
                round_.started_at = self._last_started = time.monotonic()
                self.fetches += 1
            keys = self._fetch()
            metrics.jwks_fetched(keys)
            with self._lock:
                if keys is not None:
                    self._keys = keys
                    self._fetched_at = round_.started_at
                round_.failed = keys is None
                self._unusable = not keys
        finally:
            with self._lock:
                self._pending = None
            round_.done.set_result(None)

    def _fetch(self) -> dict[str, PyJWK] | None:
        try:
            document = asyncio.run(
                fetch_key_set(self._url, timeout=self._fetch_timeout, max_bytes=self._max_bytes)
            )
            key_set = PyJWKSet.from_dict(document)
        except Exception as error:  # network, deadline, size, JSON or keys: keep what we have
            log.warning("fetching the JWKS failed: %s %s", type(error).__name__, error)
            return None
        return {
            key.key_id: key
            for key in key_set.keys
            if isinstance(key.key_id, str)
            and key.key_id
            and key.algorithm_name in ASYMMETRIC_ALGORITHMS
            and key.public_key_use in ("sig", None)
        }
