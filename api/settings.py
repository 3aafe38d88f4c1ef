"""Configuration: the one place that reads the environment (and an optional .env)."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "your-secret-here"}
_POSTGRES_SCHEMES = ("postgres://", "postgresql://", "postgresql+psycopg://")


class UnsafeSettings(ValueError):
    """Settings that production refuses to start with."""


@dataclass(frozen=True)
class Storage:
    """Where the events and the read tables live, in the terms each side needs."""

    kind: Literal["sqlite", "postgres"]
    # eventsourcing's own configuration keys (PERSISTENCE_MODULE, …).
    event_store_env: dict[str, str]
    # SQLAlchemy URL of the read tables.
    read_url: str
    # libpq parameters beyond host/port/dbname/user/password (sslmode, …).
    connect_options: dict[str, str] = field(default_factory=dict)
    # A libpq connection string for LISTEN connections (Postgres only).
    conninfo: str = ""


class LogProfile(BaseSettings):
    """Only what says how to log, read when the whole of Settings could not be (a
    refused setting): the refusal is then logged in the format the service would log
    in. Anything not a known value means a deployment, hence JSON lines."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    app_env: str = "development"
    log_format: str | None = None

    @property
    def json_logs(self) -> bool:
        if self.log_format in ("json", "text"):
            return self.log_format == "json"
        return self.app_env != "development"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A refused setting must not print the secret it was given.
        hide_input_in_errors=True,
    )

    app_env: Literal["development", "staging", "production"] = "development"
    database_url: str | None = None
    data_dir: Path = Path("data")

    better_auth_url: str | None = None
    better_auth_secret: SecretStr | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float = Field(default=30, ge=0, le=300)
    # Longest lifetime a token may claim (exp after iat, or after now without iat).
    # Better Auth's own tokens live 15 minutes; frontends that sign their own shared-secret
    # tokens commonly use 7 days, and must keep working. Lower it when none does.
    jwt_max_ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    jwks_cache_seconds: float = Field(default=300, gt=0)
    # Least time between two fetches of the key set caused by unknown key ids.
    jwks_refresh_cooldown_seconds: float = Field(default=5, ge=0)
    # A fetch of the key set, connect to last byte; and the most of it read. A JWKS is a
    # few KiB: a slower or larger answer is treated as the auth server being down.
    jwks_fetch_timeout_seconds: float = Field(default=3, gt=0, le=60)
    jwks_max_bytes: int = Field(default=2**20, ge=1024)
    auditor_roles: Annotated[list[str], NoDecode] = ["auditor", "admin"]
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]

    # Unset: a listing is the bare array of tasks. A key (e.g. "tasks" or "data"): the
    # array wrapped as {"<key>": [...], "total": n, "limit": l, "offset": o}, as some
    # frontends read it. X-Total-Count is sent either way.
    list_envelope: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")

    run_projector: bool = True
    read_your_writes_timeout_seconds: float = Field(default=5, ge=0)
    projector_poll_seconds: float = Field(default=1.0, gt=0)
    # Most events the projector applies in one read-side transaction.
    projector_batch_size: int = Field(default=500, ge=1, le=10_000)
    # How often each process checks the read tables against the log (a restored event
    # store, a damaged read file); the projector also checks whenever a round fails.
    read_model_check_seconds: float = Field(default=1.0, gt=0)
    # /readyz says "degraded" when the projection is further behind than either bound
    # (events not yet projected; age of the oldest of them), i.e. behind or stalled.
    ready_max_lag_events: int = Field(default=10_000, ge=0)
    ready_max_lag_seconds: float = Field(default=10, ge=0)
    # Its status code then: 200 keeps every replica in rotation (they share the one
    # projection; writes are durable and say X-Projection-Pending), 503 drains them.
    ready_degraded_status: Literal[200, 503] = 200
    # A projection behind the log that has applied nothing for this long, while an
    # event has waited as long, is "stalled": /readyz answers 503 (writes still work),
    # `projections status` exits 1.
    projection_stall_seconds: float = Field(default=30, gt=0)
    # Events per transaction when a build of the read model replays the log (a
    # rebuild, or a new version built beside the live one).
    rebuild_batch_size: int = Field(default=10_000, ge=1, le=100_000)
    aggregate_cache_size: int = Field(default=1000, ge=0)
    # Most bytes of task lists each process keeps in memory between commands, as
    # estimated from their tasks (0: none kept). With AGGREGATE_CACHE_SIZE, both hold.
    aggregate_cache_bytes: int = Field(default=64 * 2**20, ge=0)
    # Most bytes of listing pages each process keeps for reuse (0: none kept).
    listing_cache_bytes: int = Field(default=32 * 2**20, ge=0)
    # Most connections a process opens to each of the event store and the read tables.
    db_pool_size: int = Field(default=10, ge=2)
    # Threads for blocking route code per process (writes wait for their projection
    # without one, so few suffice).
    worker_threads: int = Field(default=4, ge=1, le=64)
    # Threads for commands per process, apart from those (at most one per user: see
    # api/turns.py). A command's thread mostly waits for its group commit, so more of
    # them put more commands in each transaction: on PostgreSQL, 32 gave 1.26-1.44x the
    # creates/s of 8 at 32 connections (issue 14). They may outnumber DB_POOL_SIZE: a
    # command needs a connection only to read (a list not cached, an idempotency key),
    # briefly, and the event store's saves share one per transaction.
    command_threads: int = Field(default=32, ge=1, le=256)
    log_level: str = "info"
    # Unset: one JSON object per line in staging and production, text in development.
    log_format: Literal["json", "text"] | None = None
    # A line per request (at LOG_LEVEL info): about a tenth of a listing's CPU. Behind a
    # proxy or load balancer that logs requests already, it can be turned off.
    access_log: bool = True

    # The edge (api/http_protocol.py, api/limits.py): what one connection may cost.
    # A request's head (request line and headers): a Better Auth JWT is about 1 KiB.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    # From a request's first byte (or the connection's opening) to the end of its head.
    header_timeout_seconds: float = Field(default=10, gt=0)
    # From the end of the head to the end of the body (at most 64 KiB).
    body_timeout_seconds: float = Field(default=20, gt=0)
    # Idle time allowed between two requests on one connection.
    keep_alive_seconds: int = Field(default=5, ge=1)
    # Open connections per process; a request past them is answered 503.
    max_connections: int = Field(default=1000, ge=1)
    # How long SIGTERM waits for requests in flight before cancelling them.
    shutdown_timeout_seconds: int = Field(default=10, ge=1)

    @field_validator("auditor_roles", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("database_url", "better_auth_url", "jwks_url", "list_envelope", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        problems = self.unsafe_settings()
        if problems and self.app_env == "production":
            raise UnsafeSettings("; ".join(problems))
        for problem in problems:
            log.warning("unsafe setting (refused in production): %s", problem)
        return self

    def unsafe_settings(self) -> list[str]:
        problems = []
        no_auth = self.better_auth_url is None and self.better_auth_secret is None
        if no_auth and self.app_env != "development":
            problems.append("no auth mode: set BETTER_AUTH_URL or BETTER_AUTH_SECRET")
        if self.better_auth_secret is not None:
            secret = self.better_auth_secret.get_secret_value()
            if len(secret) < MIN_SECRET_LENGTH:
                problems.append(
                    f"BETTER_AUTH_SECRET is shorter than {MIN_SECRET_LENGTH} characters"
                )
            if secret.lower() in _PLACEHOLDER_SECRETS:
                problems.append("BETTER_AUTH_SECRET is a placeholder")
        if "*" in self.cors_origins:
            problems.append("CORS_ORIGINS has '*' while credentials are allowed")
        return problems

    # Derived values ---------------------------------------------------------

    @cached_property
    def auth_origin(self) -> str | None:
        if self.better_auth_url is None:
            return None
        # As a browser's URL.origin has it (and Better Auth puts in iss/aud): lower-case
        # scheme and host, default port dropped, no user info, path or trailing slash.
        parts = urlsplit(self.better_auth_url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        default_port = {"http": 80, "https": 443}.get(scheme)
        port = "" if parts.port in (None, default_port) else f":{parts.port}"
        return f"{scheme}://{host}{port}"

    @property
    def json_logs(self) -> bool:
        """Log lines as JSON objects (LOG_FORMAT, or by default outside development)."""
        if self.log_format is not None:
            return self.log_format == "json"
        return self.app_env != "development"

    @property
    def jwks_endpoint(self) -> str | None:
        if self.jwks_url:
            return self.jwks_url
        return f"{self.auth_origin}/api/auth/jwks" if self.auth_origin else None

    @property
    def issuer(self) -> str | None:
        return self.jwt_issuer or self.auth_origin

    @property
    def audience(self) -> str | None:
        return self.jwt_audience or self.auth_origin

    @property
    def allowed_origins(self) -> list[str]:
        """CORS_ORIGINS; in development, each loopback origin under both of its names
        (a frontend browsed at 127.0.0.1:3000 is the one configured as localhost:3000)."""
        if self.app_env != "development":
            return self.cors_origins
        origins = list(self.cors_origins)
        for origin in self.cors_origins:
            for name, twin in (("localhost", "127.0.0.1"), ("127.0.0.1", "localhost")):
                parts = urlsplit(origin)
                if parts.hostname == name:
                    port = f":{parts.port}" if parts.port else ""
                    alias = f"{parts.scheme}://{twin}{port}"
                    if alias not in origins:
                        origins.append(alias)
        return origins

    def auth_summary(self) -> str:
        """The auth modes that are on, and the CORS origins: one line for the log."""
        jwks = (
            f"JWKS from {self.jwks_endpoint} (iss {self.issuer or 'any'}, "
            f"aud {self.audience or 'any'})"
            if self.jwks_endpoint
            else "JWKS off (set BETTER_AUTH_URL for Better Auth's EdDSA tokens)"
        )
        if self.better_auth_secret is not None:
            shared = "shared secret on (HS256)"
        elif self.better_auth_url is None and self.app_env == "development":
            shared = "shared secret on (development secret in DATA_DIR)"
        else:
            shared = "shared secret off"
        return f"auth: {jwks}; {shared}; CORS origins: {', '.join(self.allowed_origins)}"

    def shared_secret(self) -> str | None:
        """The HS256 secret: configured, or in development with no auth configured at
        all, a random one kept in the data folder so that local tokens work at once."""
        if self.better_auth_secret is not None:
            return self.better_auth_secret.get_secret_value()
        if self.app_env != "development" or self.better_auth_url is not None:
            return None
        return _local_dev_secret(self.data_dir / "dev-secret")

    @cached_property
    def storage(self) -> Storage:
        if self.database_url is None:
            return self._sqlite_storage()
        if self.database_url.startswith(_POSTGRES_SCHEMES):
            return self._postgres_storage(self.database_url)
        raise ValueError("DATABASE_URL must be a postgresql:// URL, or unset for embedded SQLite")

    def _sqlite_storage(self) -> Storage:
        events = (self.data_dir / "events.sqlite3").resolve()
        read = (self.data_dir / "read.sqlite3").resolve()
        return Storage(
            kind="sqlite",
            event_store_env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(events),
                "SQLITE_LOCK_TIMEOUT": "30",
                **self._cache_env(),
            },
            read_url=f"sqlite:///{read}",
        )

    def _postgres_storage(self, url: str) -> Storage:
        # libpq understands postgres:// and postgresql:// but not SQLAlchemy's +driver.
        libpq_url = "postgresql://" + url.split("://", 1)[1]
        params = conninfo_to_dict(libpq_url)
        main = {
            key: str(params.pop(key, "") or "")
            for key in ("host", "port", "dbname", "user", "password")
        }
        options = {key: str(value) for key, value in params.items() if value is not None}
        return Storage(
            kind="postgres",
            event_store_env={
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": main["dbname"] or main["user"] or "postgres",
                "POSTGRES_HOST": main["host"] or "localhost",
                "POSTGRES_PORT": main["port"] or "5432",
                "POSTGRES_USER": main["user"] or "postgres",
                "POSTGRES_PASSWORD": main["password"],
                # Few connections held open while idle (managed Postgres counts them;
                # a projector process needs one or two); up to DB_POOL_SIZE under load.
                "POSTGRES_POOL_SIZE": "2",
                "POSTGRES_MAX_OVERFLOW": str(self.db_pool_size - 1),  # + the projector
                # Seconds to wait for a pooled connection (whole seconds only here:
                # TaskLedger shortens it, as its library retries each wait 10 times).
                "POSTGRES_CONNECT_TIMEOUT": "5",
                "POSTGRES_LOCK_TIMEOUT": "5",
                **self._cache_env(),
            },
            read_url="postgresql+psycopg://" + url.split("://", 1)[1],
            connect_options=options,
            conninfo=make_conninfo(libpq_url),
        )

    def _cache_env(self) -> dict[str, str]:
        if not (self.aggregate_cache_size and self.aggregate_cache_bytes):
            return {}
        return {
            "AGGREGATE_CACHE_MAXSIZE": str(self.aggregate_cache_size),
            "AGGREGATE_CACHE_BYTES": str(self.aggregate_cache_bytes),
        }


def _local_dev_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once, one writes and both use its secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):
            if secret := path.read_text().strip():
                return secret
            time.sleep(0.01)  # the other process is still writing it
        raise RuntimeError(f"{path} is empty: delete it to make a new secret") from None
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
