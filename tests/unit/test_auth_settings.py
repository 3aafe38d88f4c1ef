"""Auth settings: where the issuer, audience and key set come from, what production
refuses, the CORS origins allowed, and the start-up line that names them. Settings only,
from arguments and the environment: no key set, no app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from tests.support import SECRET

AUTH_ENV = (
    "APP_ENV",
    "BETTER_AUTH_URL",
    "BETTER_AUTH_SECRET",
    "JWKS_URL",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "CORS_ORIGINS",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://auth.example.com", "https://auth.example.com"),
        ("https://auth.example.com/", "https://auth.example.com"),
        ("https://auth.example.com/api/auth/", "https://auth.example.com"),
        ("http://localhost:3000/app", "http://localhost:3000"),
        ("HTTPS://Auth.Example.com:443/api", "https://auth.example.com"),
        ("http://user:pw@127.0.0.1:80", "http://127.0.0.1"),
        ("http://[::1]:3000/", "http://[::1]:3000"),
    ],
)
def test_issuer_and_audience_default_to_the_auth_origin(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, url: str, origin: str
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, better_auth_url=url)
    assert settings.issuer == origin
    assert settings.audience == origin
    assert settings.jwks_endpoint == f"{origin}/api/auth/jwks"
    assert settings.shared_secret() is None


def test_jwks_url_issuer_and_audience_overrides(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("BETTER_AUTH_URL", "https://app.example.com/api/auth")
    clean_env.setenv("JWKS_URL", "https://keys.example.com/jwks.json")
    clean_env.setenv("JWT_ISSUER", "https://issuer.example.com")
    clean_env.setenv("JWT_AUDIENCE", "taskledger")
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.jwks_endpoint == "https://keys.example.com/jwks.json"
    assert settings.issuer == "https://issuer.example.com"
    assert settings.audience == "taskledger"


def test_secret_only_checks_no_issuer(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, better_auth_secret=SECRET)
    assert (settings.issuer, settings.audience, settings.jwks_endpoint) == (None, None, None)
    assert settings.shared_secret() == SECRET


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "no auth mode"),
        ({"better_auth_secret": "short-but-not-empty"}, "shorter than 32"),
        ({"better_auth_url": "https://auth.example.com", "cors_origins": "*"}, "CORS_ORIGINS"),
    ],
    ids=["no-auth-mode", "short-secret", "cors-wildcard"],
)
def test_production_refuses_unsafe_auth_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings(_env_file=None, app_env="production", data_dir=tmp_path, **values)


def test_production_accepts_safe_auth_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        app_env="production",
        data_dir=tmp_path,
        better_auth_url="https://auth.example.com",
        better_auth_secret=SECRET,
        cors_origins="https://app.example.com",
    )
    assert settings.unsafe_settings() == []


def test_a_refused_secret_is_not_echoed_in_the_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    weak = "weak-secret-0123456789"
    with pytest.raises(ValueError, match="shorter than 32") as refused:
        Settings(_env_file=None, app_env="production", data_dir=tmp_path, better_auth_secret=weak)
    assert weak not in str(refused.value)


@pytest.mark.parametrize(
    ("app_env", "origins", "allowed"),
    [
        ("development", "http://localhost:3000", "http://127.0.0.1:3000"),
        ("development", "http://127.0.0.1:3000", "http://localhost:3000"),
        ("development", "http://127.0.0.1:5173,https://app.example.com", "http://localhost:5173"),
        ("staging", "http://localhost:3000,http://127.0.0.1:8080", None),
        ("production", "http://localhost:3000,http://127.0.0.1:8080", None),
    ],
)
def test_only_development_allows_the_other_loopback_name_of_an_origin(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, app_env: str, origins: str, allowed: str | None
) -> None:
    settings = Settings(
        _env_file=None,
        app_env=app_env,
        data_dir=tmp_path,
        better_auth_url="https://auth.example.com",
        cors_origins=origins,
    )
    configured = origins.split(",")
    assert settings.allowed_origins == (configured if allowed is None else [*configured, allowed])


JWKS_OFF = "JWKS off (set BETTER_AUTH_URL for Better Auth's EdDSA tokens)"
DEV_SECRET = "shared secret on (development secret in DATA_DIR)"
AUTH_JWKS = "JWKS from https://auth.example.com/api/auth/jwks"
AUTH_ISS = "iss https://auth.example.com"


@pytest.mark.parametrize(
    ("values", "jwks", "shared"),
    [
        ({}, JWKS_OFF, DEV_SECRET),
        ({"better_auth_secret": SECRET}, JWKS_OFF, "shared secret on (HS256)"),
        (
            {"better_auth_url": "https://auth.example.com/api/auth"},
            f"{AUTH_JWKS} ({AUTH_ISS}, aud https://auth.example.com)",
            "shared secret off",
        ),
        (
            {"jwks_url": "https://keys.example.com/jwks.json"},
            "JWKS from https://keys.example.com/jwks.json (iss any, aud any)",
            DEV_SECRET,
        ),
        (
            {
                "better_auth_url": "https://auth.example.com",
                "jwt_audience": "taskledger",
                "better_auth_secret": SECRET,
            },
            f"{AUTH_JWKS} ({AUTH_ISS}, aud taskledger)",
            "shared secret on (HS256)",
        ),
        ({"app_env": "staging"}, JWKS_OFF, "shared secret off"),
    ],
    ids=["nothing-set", "secret-only", "url-only", "jwks-url-only", "url-and-secret", "staging"],
)
def test_the_start_up_line_names_each_auth_mode_and_the_cors_origins(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, Any], jwks: str, shared: str
) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, cors_origins="https://app.example.com", **values
    )
    assert settings.auth_summary().split("; ") == [
        f"auth: {jwks}",
        shared,
        "CORS origins: https://app.example.com",
    ]
