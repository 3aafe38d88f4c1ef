"""What a hostile JWKS key server costs a `taskledger serve` with the default key settings.

    .venv/bin/python -m bench.key_server slow|dribble|huge|rotation [--seconds 30]
    (from the repo root)

One server (SQLite) whose BETTER_AUTH_URL is a stand-in key server on 127.0.0.1, from the
tests (tests/api/test_key_server.py, tests/jwks_server.py). After one honest fetch:

  slow      the key server answers after 10 s
  dribble   it sends the key set a byte every 3 s
  huge      it sends a 150 MB body with no length
            while tokens with made-up kids come at --rate a second (each makes the service
            want the key set again), a user whose token was verified before the key
            server turned hostile and new HS256 users keep listing their tasks. Printed:
            their answers and latencies, the flood's answers and Retry-After, the fetches
            the key server saw, the server's RSS before and after.
  rotation  an honest key server that adds a key every --every s (well inside the
            refresh cooldown of the last fetch), the new key used at once: how many
            first uses were refused, how long they waited, the fetches.

The key settings are passed explicitly at their defaults (api/settings.py), so a value
in the caller's environment cannot change them.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from api.settings import Settings
from bench import harness as h
from bench.figures import figure, tally
from tests.api.test_key_server import HostileJwks
from tests.jwks_server import JwksServer
from tests.support import Background, bearer, in_threads, mint, new_user_id

KEY_SETTINGS = (
    "jwks_cache_seconds",
    "jwks_refresh_cooldown_seconds",
    "jwks_fetch_timeout_seconds",
    "jwks_max_bytes",
)
VICTIM = "u_victim"
# Longer than any wait the service should impose, so that a stall shows as a latency.
CLIENT_TIMEOUT = 30.0


def key_defaults() -> dict[str, str]:
    return {name.upper(): str(Settings.model_fields[name].default) for name in KEY_SETTINGS}


@dataclass
class Answers:
    """What one kind of client got: a status (or exception name) and a latency each."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(
        self, get: Callable[..., httpx.Response], url: str, token: str
    ) -> httpx.Response | None:
        """``get(url)`` with the token, its answer timed and counted."""
        started = time.monotonic()
        response: httpx.Response | None = None
        try:
            response = get(url, headers=bearer(token))
            status = str(response.status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append(time.monotonic() - started)
        return response

    def report(self, name: str) -> None:
        figure(f"{name}: answers", tally(self.statuses))
        if self.latencies:
            figure(f"{name}: latency p50", 1000 * h.percentile(self.latencies, 50), "ms")
            figure(f"{name}: latency max", 1000 * max(self.latencies), "ms")


def hostile(mode: str, opts: argparse.Namespace) -> None:
    stand_in = HostileJwks()
    try:
        env = key_defaults() | {"BETTER_AUTH_URL": stand_in.origin, "ACCESS_LOG": "false"}
        with (
            h.fresh_storage("sqlite", "keys") as storage,
            h.running_server(storage, extra_env=env) as server,
        ):
            for key, value in env.items():
                if key != "BETTER_AUTH_URL":
                    figure(f"setting {key}", value)
            flood_while_serving(stand_in, server, mode, opts)
    finally:
        stand_in.stop()


def flood_while_serving(
    stand_in: HostileJwks, server: h.Server, mode: str, opts: argparse.Namespace
) -> None:
    verified = new_user_id()
    verified_token = stand_in.token(verified)
    listed = httpx.get(f"{server.url}/api/{verified}/tasks", headers=bearer(verified_token))
    if listed.status_code != 200:
        raise RuntimeError(f"the verified user was refused: {listed.status_code} {listed.text}")
    rss_before = server.rss_mb()[0]
    fetches_before = stand_in.fetches
    stand_in.mode = mode
    users = {"verified user": Answers(), "new HS256 users": Answers()}

    def serve_users(stopping: threading.Event) -> None:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
            while not stopping.is_set():
                users["verified user"].get(client.get, f"/api/{verified}/tasks", verified_token)
                newcomer = new_user_id()  # a token nobody verified before
                token = mint(newcomer, secret=h.SECRET, iss=stand_in.origin, aud=stand_in.origin)
                users["new HS256 users"].get(client.get, f"/api/{newcomer}/tasks", token)
                stopping.wait(0.1)

    flood = Answers()
    get_once = functools.partial(httpx.get, timeout=CLIENT_TIMEOUT)
    retry_after: Counter[str] = Counter()

    def made_up_kid(_: int) -> None:
        token = stand_in.token(VICTIM, kid=secrets.token_urlsafe(24))
        # A connection each, as from many clients: no pool to queue them on our side.
        response = flood.get(get_once, f"{server.url}/api/{VICTIM}/tasks", token)
        with flood.lock:
            retry_after[response.headers.get("retry-after", "none") if response else "none"] += 1

    count = max(1, round(opts.seconds * opts.rate))
    h.log(f"{mode}: {count} made-up kids at {opts.rate:g}/s while users are served")
    background = Background(serve_users)
    background.start()
    started = time.monotonic()
    try:
        in_threads(count, made_up_kid, stagger=1 / opts.rate)
    finally:
        stuck = background.stop(timeout=CLIENT_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    rss_after, rss_peak = server.rss_mb()

    figure("mode", mode)
    figure("flood duration", elapsed, "s")
    flood.report("made-up kids")
    figure("made-up kids: retry-after", tally(retry_after))
    for name, answers in users.items():
        answers.report(name)
    figure("key server fetches after the honest one", stand_in.fetches - fetches_before)
    figure("RSS before", rss_before, "MiB", 0)
    figure("RSS after", rss_after, "MiB", 0)
    figure("RSS peak (VmHWM)", rss_peak, "MiB", 0)
    if stuck:
        figure("user threads still waiting at the end", len(stuck))


def rotation(opts: argparse.Namespace) -> None:
    jwks = JwksServer()
    try:
        env = key_defaults() | {"BETTER_AUTH_URL": jwks.origin, "ACCESS_LOG": "false"}
        with (
            h.fresh_storage("sqlite", "rotation") as storage,
            h.running_server(storage, extra_env=env) as server,
        ):
            for key, value in env.items():
                if key != "BETTER_AUTH_URL":
                    figure(f"setting {key}", value)
            rotate(jwks, server, opts)
    finally:
        jwks.stop()


def rotate(jwks: JwksServer, server: h.Server, opts: argparse.Namespace) -> None:
    user_id = new_user_id()
    current = jwks.add_key()
    first_uses = Answers()
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
        url = f"/api/{user_id}/tasks"
        listed = client.get(url, headers=bearer(jwks.token(current, user_id)))
        if listed.status_code != 200:
            raise RuntimeError(f"the first key was refused: {listed.status_code} {listed.text}")
        fetches_before = jwks.fetches
        h.log(f"rotation: a new key every {opts.every:g} s for {opts.seconds:g} s")
        deadline = time.monotonic() + opts.seconds
        while time.monotonic() < deadline:
            time.sleep(opts.every)
            rotated = jwks.add_key()  # Better Auth keeps the old key for a grace period
            token = jwks.token(rotated, user_id)
            first_uses.get(client.get, url, token)
            jwks.remove_key(current.kid)
            current = rotated
    rotations = len(first_uses.latencies)
    figure("mode", "rotation")
    figure("rotations", rotations)
    first_uses.report("first use of a new key")
    figure("first uses refused", rotations - first_uses.statuses["200"])
    figure("key server fetches after the first", jwks.fetches - fetches_before)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["slow", "dribble", "huge", "rotation"])
    parser.add_argument(
        "--seconds", type=float, default=30, help="how long the flood or the rotations last"
    )
    parser.add_argument(
        "--rate", type=float, default=8, help="made-up kids a second (slow, dribble, huge)"
    )
    parser.add_argument(
        "--every", type=float, default=0.5, help="seconds between two rotations (rotation)"
    )
    opts = parser.parse_args()
    if opts.seconds <= 0 or opts.rate <= 0 or opts.every <= 0:
        parser.error("--seconds, --rate and --every must be positive")
    h.install_signal_handlers()
    if opts.mode == "rotation":
        rotation(opts)
    else:
        hostile(opts.mode, opts)


if __name__ == "__main__":
    main()
