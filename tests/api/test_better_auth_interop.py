"""Interop tier: taskledger against a REAL Better Auth server (Node, better-auth 1.7).

The Node program in tests/interop/better_auth/ runs Better Auth with email and
password sign-up, the jwt plugin and the admin plugin, on a fresh SQLite file. Users
sign up over HTTP and get their JWTs from `GET /api/auth/token` with the session
cookie, exactly as a frontend does. taskledger is configured with nothing but
BETTER_AUTH_URL (and its own data folder): no shared secret, no issuer, audience or
JWKS URL. These tests prove that

- tokens signed with the default key (EdDSA) and with ES256 and RS256 keys verify,
  and every task operation works with them, under the token's `sub`;
- users stay apart: another user's path answers 403, another user's task id 404;
- an admin (the admin plugin's `role` claim) reads any user's tasks and writes none;
- a rotated key works on its first request, and a token signed with the old key
  keeps working;
- with Better Auth down, cached keys keep verifying; a token whose key was never
  seen answers 401 or 503 (problem+json), never 500;
- the served process (`taskledger serve`) needs only BETTER_AUTH_URL;
- BETTER_AUTH_URL may be spelt any way Better Auth accepts (upper-case host, trailing
  slash): iss and aud still match.

`npm ci` runs once (when node_modules is missing or older than the lockfile) and is
kept between runs. Without node/npm these tests skip, unless REQUIRE_POSTGRES=1 (as
in CI), where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from tests.support import (
    REQUIRE_POSTGRES,
    ROOT,
    LiveServer,
    assert_problem,
    bearer,
    free_port,
    make_settings,
    service_env,
    serving,
    stop_process,
)

NODE_PROJECT = ROOT / "tests" / "interop" / "better_auth"
NODE_FILES = ("package.json", "package-lock.json", "server.mjs")
PASSWORD = "correct-horse-battery-staple"
SESSION_COOKIE = "better-auth.session_token"
ROTATION_SECONDS = 3
MIN_NODE = 20
# The default key (no keyPairConfig at all), then the other algorithms asked for.
ALGORITHMS = [None, "ES256", "RS256"]


# The Node project -----------------------------------------------------------


def _install_dir() -> Path:
    """Where the Node project is installed: a cache outside the checkout, keyed by the
    lockfile, so that fresh clones on one machine (CI's) share one `npm ci` (compiling
    better-sqlite3 takes minutes)."""
    digest = hashlib.sha256(
        b"".join((NODE_PROJECT / name).read_bytes() for name in NODE_FILES[:2])
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "taskledger" / f"better-auth-{digest}"


def _unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (REQUIRE_POSTGRES=1: CI must run the Better Auth interop tests)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_project() -> Path:
    """tests/interop/better_auth, installed (cached between runs and checkouts)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"{' and '.join(missing)} not found: these tests need Node.js 20+ and npm")
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < MIN_NODE:
        _unavailable(f"node {version} is too old: better-sqlite3 12 needs Node.js {MIN_NODE}+")
    install_dir = _install_dir()
    install_dir.mkdir(parents=True, exist_ok=True)
    for name in NODE_FILES:  # server.mjs too: it resolves packages beside itself
        shutil.copyfile(NODE_PROJECT / name, install_dir / name)
    if not (install_dir / "node_modules" / ".package-lock.json").exists():
        env = dict(os.environ)
        if Path("/usr/include/node/node.h").exists():
            # Build better-sqlite3 against the installed headers: its prebuilt binary
            # and node-gyp's header download both need more than the npm registry.
            env.setdefault("npm_config_nodedir", "/usr")
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=install_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-4000:]
            _unavailable(f"npm ci failed in {install_dir}:\n{output}")
    return install_dir


# A Better Auth server and its users -------------------------------------------


@dataclass
class AuthUser:
    id: str
    email: str
    cookie: str
    server: BetterAuthServer

    def token(self) -> str:
        """A fresh JWT from `GET /api/auth/token`, as a frontend gets it."""
        return self.server.token(self.cookie)

    def tasks_url(self, task_id: str | None = None) -> str:
        return f"/api/{self.id}/tasks" + (f"/{task_id}" if task_id else "")


class BetterAuthServer:
    """`node server.mjs` on a free port, with its own SQLite file."""

    def __init__(
        self,
        node_dir: Path,
        work_dir: Path,
        *,
        alg: str | None = None,
        rotation_seconds: int | None = None,
        base_url: str | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = base_url or self.url
        work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = work_dir / "better-auth.log"
        env = {
            **os.environ,
            "PORT": str(self.port),
            "BETTER_AUTH_DB": str(work_dir / "auth.sqlite3"),
            "BETTER_AUTH_URL": self.base_url,
        }
        env.pop("BETTER_AUTH_SECRET", None)
        if alg:
            env["JWT_ALG"] = alg
        if rotation_seconds:
            env["JWKS_ROTATION_SECONDS"] = str(rotation_seconds)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["node", "server.mjs"],
                cwd=node_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Sent like a browser on the frontend's origin; each user's cookie is sent
        # explicitly, never kept in the client.
        self.http = httpx.Client(base_url=self.url, headers={"Origin": self.base_url}, timeout=10)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Better Auth exited early:\n{self.output()}")
            if "READY " in self.output():
                return
            time.sleep(0.05)
        raise AssertionError(f"Better Auth not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.http.close()
        stop_process(self.proc)

    def sign_up(self, name: str = "user") -> AuthUser:
        email = f"{name}-{uuid.uuid4().hex[:10]}@example.com"
        response = self.http.post(
            "/api/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": name},
        )
        assert response.status_code == 200, response.text
        cookies = [
            header.split(";", 1)[0]
            for header in response.headers.get_list("set-cookie")
            if header.startswith(SESSION_COOKIE + "=")
        ]
        assert cookies, response.headers
        self.http.cookies.clear()
        return AuthUser(response.json()["user"]["id"], email, cookies[0], self)

    def token(self, cookie: str) -> str:
        response = self.http.get("/api/auth/token", headers={"Cookie": cookie})
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def make_admin(self, user: AuthUser) -> None:
        response = self.http.post("/test/make-admin", json={"email": user.email})
        assert response.status_code == 200, response.text

    def jwks(self) -> dict[str, Any]:
        response = self.http.get("/api/auth/jwks")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def jwks_requests(self) -> int:
        """How often anyone (taskledger, or this test) fetched the JWKS."""
        return int(self.http.get("/test/stats").json()["jwks_requests"])


StartAuth = Callable[..., BetterAuthServer]
StartTaskledger = Callable[..., TestClient]


@pytest.fixture(scope="session")
def start_better_auth(
    node_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartAuth]:
    """Start Better Auth servers; all are stopped at the end of the session."""
    started: list[BetterAuthServer] = []

    def start(**options: Any) -> BetterAuthServer:
        server = BetterAuthServer(node_project, tmp_path_factory.mktemp("better-auth"), **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def start_taskledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartTaskledger]:
    """taskledger in-process, configured with nothing but BETTER_AUTH_URL (+ data dir)."""
    with contextlib.ExitStack() as stack:

        def start(auth_url: str, **overrides: Any) -> TestClient:
            settings = make_settings(
                None,
                tmp_path_factory.mktemp("taskledger"),
                better_auth_url=auth_url,
                better_auth_secret=None,
                **overrides,
            )
            assert settings.shared_secret() is None
            return stack.enter_context(serving(settings))

        yield start


@pytest.fixture(scope="session")
def servers(start_better_auth: StartAuth) -> Callable[[str | None], BetterAuthServer]:
    """One Better Auth server per algorithm, shared by the whole session."""
    cache: dict[str | None, BetterAuthServer] = {}

    def server(alg: str | None) -> BetterAuthServer:
        if alg not in cache:
            cache[alg] = start_better_auth(alg=alg)
        return cache[alg]

    return server


@pytest.fixture(scope="session")
def apps(start_taskledger: StartTaskledger) -> Callable[[BetterAuthServer], TestClient]:
    """One taskledger app per Better Auth server, shared by the whole session."""
    cache: dict[str, TestClient] = {}

    def app(server: BetterAuthServer) -> TestClient:
        if server.url not in cache:
            cache[server.url] = start_taskledger(server.url)
        return cache[server.url]

    return app


@pytest.fixture(scope="session")
def default_server(servers: Callable[[str | None], BetterAuthServer]) -> BetterAuthServer:
    return servers(None)


@pytest.fixture(scope="session")
def default_app(
    apps: Callable[[BetterAuthServer], TestClient], default_server: BetterAuthServer
) -> TestClient:
    return apps(default_server)


# Helpers --------------------------------------------------------------------


def claims(token: str) -> dict[str, Any]:
    """A token's payload, unverified: for looking at it (taskledger does the verifying)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


def create(client: TestClient, user: AuthUser, token: str, title: str) -> dict[str, Any]:
    response = client.post(user.tasks_url(), json={"title": title}, headers=bearer(token))
    assert response.status_code == 201, response.text
    return dict(response.json())


def listing(client: TestClient, user: AuthUser, token: str) -> list[dict[str, Any]]:
    response = client.get(user.tasks_url(), headers=bearer(token))
    assert response.status_code == 200, response.text
    return list(response.json())


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


# Tokens from a real Better Auth ----------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS, ids=["EdDSA-default", "ES256", "RS256"])
def test_every_operation_works_with_a_real_token(
    alg: str | None,
    servers: Callable[[str | None], BetterAuthServer],
    apps: Callable[[BetterAuthServer], TestClient],
) -> None:
    server = servers(alg)
    client = apps(server)
    alice, bob = server.sign_up("alice"), server.sign_up("bob")
    token = alice.token()

    header = jwt.get_unverified_header(token)
    assert header["alg"] == (alg or "EdDSA")
    payload = claims(token)
    assert payload["sub"] == alice.id
    assert payload["iss"] == payload["aud"] == server.url
    assert payload["role"] == "user"

    task = create(client, alice, token, "  buy milk  ")
    assert task["user_id"] == payload["sub"] == alice.id
    assert task["title"] == "buy milk"
    second = create(client, alice, token, "call mum")
    assert {t["id"] for t in listing(client, alice, token)} == {task["id"], second["id"]}

    got = client.get(alice.tasks_url(task["id"]), headers=bearer(token))
    assert got.status_code == 200, got.text
    assert got.json()["user_id"] == alice.id

    updated = client.put(
        alice.tasks_url(task["id"]),
        json={"title": "buy oat milk", "description": "the barista one"},
        headers=bearer(token),
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["title"] == "buy oat milk"

    completed = client.patch(alice.tasks_url(task["id"]) + "/complete", headers=bearer(token))
    assert completed.status_code == 200, completed.text
    assert completed.json()["completed"] is True
    pending = client.get(alice.tasks_url(), params={"status": "pending"}, headers=bearer(token))
    assert [t["id"] for t in pending.json()] == [second["id"]]

    deleted = client.delete(alice.tasks_url(second["id"]), headers=bearer(token))
    assert deleted.status_code == 204, deleted.text
    remaining = listing(client, alice, token)
    assert [(t["id"], t["completed"]) for t in remaining] == [(task["id"], True)]

    # Another real user of the same server starts empty and works just as well.
    bob_token = bob.token()
    assert listing(client, bob, bob_token) == []
    assert create(client, bob, bob_token, "bob's")["user_id"] == bob.id


def test_users_stay_apart(default_server: BetterAuthServer, default_app: TestClient) -> None:
    client = default_app
    alice, bob = default_server.sign_up("alice"), default_server.sign_up("bob")
    alice_token, bob_token = alice.token(), bob.token()
    tasks = [create(client, alice, alice_token, f"alice {n}") for n in range(2)]
    before = listing(client, alice, alice_token)
    own = bob.tasks_url
    theirs = alice.tasks_url
    task_id = tasks[0]["id"]
    as_bob = bearer(bob_token)

    # Bob on Alice's paths: 403, whatever the method.
    assert_problem(client.get(theirs(), headers=as_bob), 403)
    assert_problem(client.post(theirs(), json={"title": "x"}, headers=as_bob), 403)
    assert_problem(client.get(theirs(task_id), headers=as_bob), 403)
    assert_problem(client.put(theirs(task_id), json={"title": "x"}, headers=as_bob), 403)
    assert_problem(client.patch(theirs(task_id) + "/complete", headers=as_bob), 403)
    assert_problem(client.delete(theirs(task_id), headers=as_bob), 403)

    # Bob on his own path with Alice's task ids: 404, as if they did not exist.
    for task in tasks:
        assert_problem(client.get(own(task["id"]), headers=as_bob), 404)
        assert_problem(client.put(own(task["id"]), json={"title": "x"}, headers=as_bob), 404)
        assert_problem(client.patch(own(task["id"]) + "/complete", headers=as_bob), 404)
        assert_problem(client.delete(own(task["id"]), headers=as_bob), 404)
    assert listing(client, bob, bob_token) == []

    assert listing(client, alice, alice_token) == before


def test_an_admin_reads_everyone_and_writes_nobody_else(
    default_server: BetterAuthServer, default_app: TestClient
) -> None:
    client = default_app
    alice, carol = default_server.sign_up("alice"), default_server.sign_up("carol")
    alice_token = alice.token()
    task = create(client, alice, alice_token, "alice's")
    before = listing(client, alice, alice_token)

    # Before Better Auth makes her an admin, Carol is an ordinary user.
    plain = carol.token()
    assert claims(plain)["role"] == "user"
    assert_problem(client.get(alice.tasks_url(), headers=bearer(plain)), 403)

    default_server.make_admin(carol)
    admin_token = carol.token()
    assert claims(admin_token)["role"] == "admin"
    assert claims(admin_token)["sub"] == carol.id
    as_admin = bearer(admin_token)

    assert [t["id"] for t in listing(client, alice, admin_token)] == [task["id"]]
    one = client.get(alice.tasks_url(task["id"]), headers=as_admin)
    assert one.status_code == 200, one.text
    assert one.json()["user_id"] == alice.id

    url = alice.tasks_url(task["id"])
    assert_problem(client.post(alice.tasks_url(), json={"title": "x"}, headers=as_admin), 403)
    assert_problem(client.put(url, json={"title": "x"}, headers=as_admin), 403)
    assert_problem(client.patch(url + "/complete", headers=as_admin), 403)
    assert_problem(client.patch(url + "/complete", json={"completed": True}, headers=as_admin), 403)
    assert_problem(client.delete(url, headers=as_admin), 403)
    assert listing(client, alice, alice_token) == before

    # Her own tasks she writes like anyone.
    assert create(client, carol, admin_token, "carol's")["user_id"] == carol.id


# Keys over time -------------------------------------------------------------


def test_a_rotated_key_works_at_once_and_the_old_key_keeps_working(
    start_better_auth: StartAuth, start_taskledger: StartTaskledger
) -> None:
    server = start_better_auth(rotation_seconds=ROTATION_SECONDS)
    # JWKS_CACHE_SECONDS stays at its default: only the unknown kid makes it refetch.
    client = start_taskledger(server.url, jwks_refresh_cooldown_seconds=1)
    alice, bob = server.sign_up("alice"), server.sign_up("bob")
    old_alice, old_bob = alice.token(), bob.token()
    old_kid = kid_of(old_alice)
    assert kid_of(old_bob) == old_kid
    task = create(client, alice, old_alice, "before rotation")  # taskledger caches the keys

    time.sleep(ROTATION_SECONDS + 0.5)
    new_alice = alice.token()  # Better Auth mints a new key on the first token past expiry
    new_kid = kid_of(new_alice)
    assert new_kid != old_kid
    assert {key["kid"] for key in server.jwks()["keys"]} == {old_kid, new_kid}
    fetches = server.jwks_requests()

    # The new key works on its very first request: one refetch, no 401.
    listed = client.get(alice.tasks_url(), headers=bearer(new_alice))
    assert listed.status_code == 200, listed.text
    assert [t["id"] for t in listed.json()] == [task["id"]]
    assert server.jwks_requests() == fetches + 1
    assert create(client, alice, new_alice, "after rotation")["user_id"] == alice.id

    # Tokens signed with the old key, still unexpired, keep working: the one already
    # seen, and one never seen before (verified against the refreshed key set).
    assert claims(old_bob)["exp"] > time.time()
    assert len(listing(client, alice, old_alice)) == 2
    assert create(client, bob, old_bob, "old key")["user_id"] == bob.id
    assert server.jwks_requests() == fetches + 1


def test_with_better_auth_down_cached_keys_keep_verifying(
    start_better_auth: StartAuth, start_taskledger: StartTaskledger
) -> None:
    server = start_better_auth()
    # A second Better Auth with the same URL (so the same iss and aud), its own keys.
    stranger_server = start_better_auth(base_url=server.url)
    # Keys go stale after 1 s, to show that a failed refresh keeps them.
    client = start_taskledger(server.url, jwks_cache_seconds=1, jwks_refresh_cooldown_seconds=0)
    alice, bob, dave = server.sign_up("alice"), server.sign_up("bob"), server.sign_up("dave")
    alice_token, bob_token, dave_token = alice.token(), bob.token(), dave.token()
    stranger = stranger_server.sign_up("stranger")
    stranger_token = stranger.token()
    assert claims(stranger_token)["iss"] == server.url
    assert kid_of(stranger_token) != kid_of(alice_token)
    stranger_server.stop()

    task = create(client, alice, alice_token, "before the outage")
    # Up: a key Better Auth never had is refused, even with the right iss and aud.
    assert_problem(client.get(stranger.tasks_url(), headers=bearer(stranger_token)), 401)

    server.stop()

    # The same token, and one never presented before, both verify with the cached key.
    assert [t["id"] for t in listing(client, alice, alice_token)] == [task["id"]]
    assert create(client, bob, bob_token, "during the outage")["user_id"] == bob.id
    time.sleep(1.2)  # the cached keys are stale now, and refreshing them fails
    assert create(client, dave, dave_token, "still down")["user_id"] == dave.id
    assert len(listing(client, alice, alice_token)) == 1

    # A key never seen cannot be fetched: 401 or 503 problem+json, never a 500.
    response = client.get(stranger.tasks_url(), headers=bearer(stranger_token))
    assert_problem(response, (401, 503))


# The real process -----------------------------------------------------------


@pytest.mark.slow
def test_the_served_process_needs_only_better_auth_url(
    default_server: BetterAuthServer,
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    env = service_env(None, tmp_path / "data", BETTER_AUTH_URL=default_server.url)
    del env["BETTER_AUTH_SECRET"]
    base_url, _ = live_server(env)
    alice = default_server.sign_up("alice")
    token = alice.token()
    with httpx.Client(base_url=base_url, headers=bearer(token), timeout=10) as http:
        created = http.post(alice.tasks_url(), json={"title": "served"})
        assert created.status_code == 201, created.text
        assert created.json()["user_id"] == alice.id
        task_url = alice.tasks_url(created.json()["id"])
        assert http.patch(task_url + "/complete").json()["completed"] is True
        assert [t["title"] for t in http.get(alice.tasks_url()).json()] == ["served"]
        assert http.delete(task_url).status_code == 204
        # And an HS256 token is refused: there is no shared secret in this mode.
        forged = jwt.encode(
            {"sub": alice.id, "exp": int(time.time()) + 60},
            "x" * 48,
            algorithm="HS256",
        )
        assert_problem(http.get(alice.tasks_url(), headers=bearer(forged)), 401)


def test_the_issuer_matches_however_the_url_is_spelt(
    start_better_auth: StartAuth, start_taskledger: StartTaskledger
) -> None:
    # Better Auth puts the URL's WHATWG origin in iss and aud: lower-case host, no slash.
    port = free_port()
    spelt = f"HTTP://LocalHost:{port}/"
    server = start_better_auth(port=port, base_url=spelt)
    client = start_taskledger(spelt)
    alice = server.sign_up("alice")
    token = alice.token()
    assert claims(token)["iss"] == f"http://localhost:{port}"
    listed = client.get(alice.tasks_url(), headers=bearer(token))
    assert listed.status_code == 200, listed.text
