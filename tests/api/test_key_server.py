"""A key server that hangs, dribbles or floods cannot stall the API (issue 9, rows 1, 15).

The stand-in is real HTTP on 127.0.0.1 serving a real key set (EdDSA and RS256, made with
`cryptography`), or misbehaving on purpose: answering after 10 s, sending one byte every
3 s (each byte resets a per-read timeout, so only a deadline on the whole fetch ends it),
or sending a 150 MB body (streamed, never built). A real `taskledger serve` process is
flooded with made-up `kid`s while a user with an already-verified token and a new HS256
user keep being served; its RSS is read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import secrets
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.keys import FetchFailed, JwksKeys, KeysUnavailable, fetch_key_set
from tests.jwks_server import JWKS_PATH, JwksServer, SigningKey, better_auth_claims
from tests.support import (
    Background,
    LiveServer,
    assert_problem,
    bearer,
    in_threads,
    make_settings,
    mint,
    new_user_id,
    service_env,
    serving,
)

HUGE_BYTES = 150 * 2**20
CHUNK = b" " * 2**16
GZIP_BOMB = b" " * 64 * 2**20
COOLDOWN = 2.0
FETCH_TIMEOUT = 1.0
# Every answer to the users who must not be stalled comes within this (it was 30 s).
ANSWER_BOUND = 2.0
VICTIM = "u_victim"


class HostileJwks:
    """Serves a real key set at /api/auth/jwks, or misbehaves as ``mode`` says:
    "slow" answers after 10 s, "dribble" sends a byte every 3 s, "huge" sends 150 MB
    with no length (read until closed), "huge-declared" the same with a Content-Length,
    "redirect" points elsewhere."""

    def __init__(self) -> None:
        self.keys = [SigningKey("EdDSA"), SigningKey("RS256")]
        self.mode = "honest"
        self.fetches = 0
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return self.origin + JWKS_PATH

    def key_set(self) -> bytes:
        return json.dumps({"keys": [key.jwk for key in self.keys]}).encode()

    def token(self, sub: str, *, kid: str | None = None, **claims: Any) -> str:
        key = self.keys[0]
        header = {} if kid is None else {"kid": kid}
        return key.sign(better_auth_claims(sub, self.origin, **claims), **header)

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.fetches += 1
                with contextlib.suppress(OSError):  # the service hung up, as it should
                    self._answer(stand_in.mode, stand_in.key_set())

            def _answer(self, mode: str, body: bytes) -> None:
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", stand_in.url + "?again")
                    self.end_headers()
                    return
                if mode == "slow" and stand_in._stopping.wait(10):
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if mode.startswith("gzip"):
                    # Compressed though asked for identity; "gzip-bomb" inflates to 64 MB.
                    body = gzip.compress(GZIP_BOMB if mode == "gzip-bomb" else body)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(body)))
                elif mode == "huge-declared":
                    self.send_header("Content-Length", str(HUGE_BYTES))
                elif mode != "huge":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "dribble":
                    for byte in body:
                        if stand_in._stopping.wait(3):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                elif mode.startswith("huge"):
                    self.wfile.write(b'{"keys": [')
                    for _ in range(HUGE_BYTES // len(CHUNK)):
                        if stand_in._stopping.is_set():
                            return
                        self.wfile.write(CHUNK)
                else:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def stand_in() -> Iterator[HostileJwks]:
    server = HostileJwks()
    yield server
    server.stop()


def status(client: httpx.Client, user_id: str, token: str) -> int:
    """The status of listing the user's tasks; 0 if not answered within the bound."""
    try:
        return client.get(f"/api/{user_id}/tasks", headers=bearer(token)).status_code
    except httpx.TimeoutException:
        return 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# The fetch on its own ----------------------------------------------------------------


def fetch(url: str, *, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    return asyncio.run(fetch_key_set(url, timeout=timeout, max_bytes=2**20))


def test_an_honest_key_set_is_fetched(stand_in: HostileJwks) -> None:
    kids = {key["kid"] for key in fetch(stand_in.url)["keys"]}
    assert kids == {key.kid for key in stand_in.keys}


@pytest.mark.parametrize("mode", ["slow", "dribble"])
def test_a_fetch_ends_at_its_deadline_however_the_server_trickles(
    stand_in: HostileJwks, mode: str
) -> None:
    stand_in.mode = mode
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        fetch(stand_in.url, timeout=FETCH_TIMEOUT)
    # Cut off at the deadline (a dribble would otherwise last ~50 minutes).
    assert time.monotonic() - started < FETCH_TIMEOUT + 2


@pytest.mark.parametrize("mode", ["huge", "huge-declared", "redirect"])
def test_a_huge_or_redirected_answer_is_refused(stand_in: HostileJwks, mode: str) -> None:
    stand_in.mode = mode
    with pytest.raises(FetchFailed):
        fetch(stand_in.url, timeout=10)


def test_a_compressed_answer_is_read_and_inflated_no_further_than_the_cap(
    stand_in: HostileJwks,
) -> None:
    stand_in.mode = "gzip"
    assert fetch(stand_in.url, timeout=10)["keys"]
    stand_in.mode = "gzip-bomb"
    tracemalloc.start()
    try:
        with pytest.raises(FetchFailed, match="over"):
            fetch(stand_in.url, timeout=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # inflated whole, it would take 64 MB


def test_only_http_key_servers_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        JwksKeys("file:///etc/passwd", max_age=300, cooldown=5)


# The verifier's key set: waiting shared and bounded ----------------------------------


def test_after_a_failed_fetch_unknown_kids_are_answered_503_at_once(
    stand_in: HostileJwks,
) -> None:
    keys = JwksKeys(stand_in.url, max_age=300, cooldown=1.5, fetch_timeout=0.5)
    known = stand_in.keys[0].kid
    assert keys.key_for(known).key_id == known
    stand_in.mode = "slow"
    # Inside the cooldown an unknown kid waits for the next fetch, which fails.
    with pytest.raises(KeysUnavailable) as unavailable:
        keys.key_for("made-up")
    assert unavailable.value.retry_after >= 1
    assert stand_in.fetches == 2
    # Until the next fetch is due, more unknown kids need not wait: 503 at once.
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):
        keys.key_for("made-up-too")
    assert time.monotonic() - started < 0.5
    assert stand_in.fetches == 2
    # Known keys are kept and never wait.
    assert keys.key_for(known).key_id == known


def test_waiters_on_the_event_loop_share_one_fetch_and_hold_no_thread(
    stand_in: HostileJwks,
) -> None:
    stand_in.mode = "slow"  # every waiter gives up with the fetch, at its deadline
    keys = JwksKeys(stand_in.url, max_age=300, cooldown=5, fetch_timeout=FETCH_TIMEOUT)

    async def many() -> list[BaseException | Any]:
        lookups = [keys.key_for_async(f"kid-{n}") for n in range(200)]
        return await asyncio.gather(*lookups, return_exceptions=True)

    threads_before = threading.active_count()
    results = asyncio.run(many())
    assert all(isinstance(result, KeysUnavailable) for result in results)
    assert stand_in.fetches == 1
    # 200 waiters held no thread (the stand-in's own handler thread is still asleep).
    assert threading.active_count() < threads_before + 10


# A live server flooded with made-up kids while others are served ----------------------


@pytest.mark.parametrize("mode", ["slow", "dribble", "huge"])
def test_a_hostile_key_server_stalls_nobody(
    stand_in: HostileJwks, live_server: LiveServer, tmp_path: Path, mode: str
) -> None:
    env = service_env(
        None,
        tmp_path,
        BETTER_AUTH_URL=stand_in.origin,
        JWKS_REFRESH_COOLDOWN_SECONDS=str(COOLDOWN),
        JWKS_FETCH_TIMEOUT_SECONDS=str(FETCH_TIMEOUT),
    )
    base_url, server = live_server(env)
    assert server.proc is not None
    verified = new_user_id()
    verified_token = stand_in.token(verified)
    with httpx.Client(base_url=base_url, timeout=ANSWER_BOUND) as client:
        listed = client.get(f"/api/{verified}/tasks", headers=bearer(verified_token))
        assert listed.status_code == 200, listed.text
    assert stand_in.fetches == 1
    rss_before = rss_mib(server.proc.pid)
    stand_in.mode = mode

    served: list[tuple[str, int]] = []

    def users(stopping: threading.Event) -> None:
        # Each request fails the test by timing out if it is not answered in the bound.
        with httpx.Client(base_url=base_url, timeout=ANSWER_BOUND) as client:
            while not stopping.is_set():
                served.append(("verified", status(client, verified, verified_token)))
                newcomer = new_user_id()  # never seen: a token nobody verified before
                token = mint(newcomer, iss=stand_in.origin, aud=stand_in.origin)
                served.append(("hs256", status(client, newcomer, token)))
                stopping.wait(0.2)

    def made_up_kid(_: int) -> httpx.Response:
        token = stand_in.token(VICTIM, kid=secrets.token_urlsafe(24))
        # The longest a waiter may wait (a fetch under way, the cooldown, its own fetch).
        return httpx.get(f"{base_url}/api/{VICTIM}/tasks", headers=bearer(token), timeout=10)

    background = Background(users)
    background.start()
    started = time.monotonic()
    try:
        flood = in_threads(32, made_up_kid, stagger=1 / 8)  # 8 requests a second, 4 s
    finally:
        assert not background.stop(timeout=ANSWER_BOUND + 1)
    elapsed = time.monotonic() - started

    unanswered = [(who, status) for who, status in served if status != 200]
    assert served and not unanswered, f"{len(unanswered)} of {len(served)}: {unanswered}"
    assert {who for who, _ in served} == {"verified", "hs256"}
    for answer in flood:
        assert isinstance(answer, httpx.Response), answer
        assert_problem(answer, 503)
        assert int(answer.headers["retry-after"]) >= 1
    # The honest fetch, then at most one per cooldown however many kids were made up.
    assert stand_in.fetches <= 2 + elapsed / COOLDOWN
    # At most the body cap was read, not 150 MB (RSS 98 -> 482 MiB before).
    assert rss_mib(server.proc.pid) - rss_before < 64


# Rotation: a new kid inside the cooldown waits for the next fetch, never a 401 ---------


def test_a_rotated_key_works_on_first_use_inside_the_cooldown_every_time(
    tmp_path: Path,
) -> None:
    cooldown = 0.3
    jwks = JwksServer()
    settings = make_settings(
        None,
        tmp_path,
        better_auth_url=jwks.origin,
        better_auth_secret=None,
        jwks_refresh_cooldown_seconds=cooldown,
    )
    user_id = new_user_id()
    url = f"/api/{user_id}/tasks"
    try:
        with serving(settings) as client:
            current = jwks.add_key()
            assert client.get(url, headers=bearer(jwks.token(current, user_id))).status_code == 200
            for run in range(20):
                last_fetch_answered = time.monotonic()
                rotated = jwks.add_key()  # Better Auth keeps the old key for a grace period
                token = jwks.token(rotated, user_id)
                sent = time.monotonic()
                response = client.get(url, headers=bearer(token))
                assert response.status_code == 200, (run, response.text)
                # The case under test: the token came within the cooldown of the last fetch.
                assert sent - last_fetch_answered < cooldown
                jwks.remove_key(current.kid)
                current = rotated
            assert jwks.fetches == 21
    finally:
        jwks.stop()
