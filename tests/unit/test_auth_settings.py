"""Auth settings: where the issuer, audience and key set come from, and what production
refuses. Settings only, from arguments and the environment: no key set, no app."""

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
