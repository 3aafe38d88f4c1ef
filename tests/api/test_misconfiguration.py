"""The misconfigurations a developer meets when connecting a frontend, each explained:
by the start-up line (which auth modes are on), by a log line at info saying why a token
was refused, and by the 401's detail naming the check that failed (no claim echoed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.jwks_server import JwksServer, better_auth_claims
from tests.support import LiveServer, assert_problem, bearer, new_user_id, service_env, wait_for


@pytest.fixture
def better_auth() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = service_env(None, tmp_path / "data", LOG_LEVEL="info", **settings)
    if "BETTER_AUTH_SECRET" not in settings:
        del env["BETTER_AUTH_SECRET"]
    return env


def _refused(base_url: str, token: str, user_id: str) -> dict[str, object]:
    response = httpx.get(f"{base_url}/api/{user_id}/tasks", headers=bearer(token), timeout=10)
    return assert_problem(response, 401, token)


@pytest.mark.parametrize(
    ("secret", "shared"),
    [(None, "on (development secret in DATA_DIR)"), ("s" * 40, "on (HS256)")],
    ids=["nothing-set", "secret-only"],
)
def test_a_better_auth_token_without_jwks_mode_says_to_set_better_auth_url(
    live_server: LiveServer,
    better_auth: JwksServer,
    tmp_path: Path,
    secret: str | None,
    shared: str,
) -> None:
    env = _env(tmp_path, **({"BETTER_AUTH_SECRET": secret} if secret else {}))
    base_url, proc = live_server(env)
    assert "auth: JWKS off (set BETTER_AUTH_URL" in proc.output()
    assert f"; shared secret {shared};" in proc.output()
    user_id = new_user_id()
    token = better_auth.token(better_auth.add_key("EdDSA"), user_id)
    problem = _refused(base_url, token, user_id)
    assert problem["detail"] == "token algorithm not accepted: JWKS mode is off"
    wait_for(
        lambda: "EdDSA token but JWKS mode is off: set BETTER_AUTH_URL" in proc.output(),
        5,
        "the log line",
    )
    assert token not in proc.output()


def test_an_issuer_that_differs_by_host_name_is_named_in_the_log(
    live_server: LiveServer, better_auth: JwksServer, tmp_path: Path
) -> None:
    configured = f"http://127.0.0.1:{better_auth.port}"
    actual = f"http://localhost:{better_auth.port}"
    base_url, proc = live_server(_env(tmp_path, BETTER_AUTH_URL=configured))
    jwks = f"auth: JWKS from {configured}/api/auth/jwks (iss {configured}, aud {configured})"
    assert jwks in proc.output()
    assert "shared secret off" in proc.output()
    user_id = new_user_id()
    token = better_auth.add_key("EdDSA").sign(better_auth_claims(user_id, actual))
    problem = _refused(base_url, token, user_id)
    assert problem["detail"] == "token issuer not accepted"
    assert actual not in str(problem)  # no claim echoed to the client
    expected_line = f"issuer {actual} is not the expected {configured}"
    wait_for(lambda: expected_line in proc.output(), 5, "the log line")
    assert token not in proc.output()


@pytest.mark.parametrize(
    ("cors_origins", "browsed"),
    [(None, "http://127.0.0.1:3000"), ("http://127.0.0.1:3000", "http://localhost:3000")],
    ids=["default-localhost", "127.0.0.1-configured"],
)
def test_a_frontend_browsed_at_the_other_loopback_name_is_allowed_in_development(
    live_server: LiveServer, tmp_path: Path, cors_origins: str | None, browsed: str
) -> None:
    env = _env(tmp_path, **({"CORS_ORIGINS": cors_origins} if cors_origins else {}))
    base_url, proc = live_server(env)
    configured = cors_origins or "http://localhost:3000"
    assert f"CORS origins: {configured}, {browsed}" in proc.output()
    preflight = {
        "Origin": browsed,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    response = httpx.options(f"{base_url}/api/u/tasks", headers=preflight, timeout=10)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == browsed
    # Only loopback twins: another origin is still refused.
    other = {**preflight, "Origin": "http://127.0.0.2:3000"}
    assert httpx.options(f"{base_url}/api/u/tasks", headers=other, timeout=10).status_code == 400
