"""A stand-in for Better Auth's JWKS endpoint, and tokens shaped like the ones it issues.

The server is real HTTP on a free local port, so the service fetches keys the way it
does in production. Keys are real (generated with `cryptography`), and so are the
signatures: nothing in the verifier is faked.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

JWKS_PATH = "/api/auth/jwks"
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _private_key(alg: str) -> PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES512":
        return ec.generate_private_key(ec.SECP521R1())
    raise ValueError(f"no key type for {alg}")


def _public_jwk(key: PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    return ECAlgorithm.to_jwk(public, as_dict=True)


@dataclass
class SigningKey:
    """One of the auth server's key pairs: publishes its JWK, signs tokens."""

    alg: str
    # Better Auth's kids are 32 random characters.
    kid: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    private_key: PrivateKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.private_key = _private_key(self.alg)

    @property
    def jwk(self) -> dict[str, Any]:
        """The public JWK as Better Auth publishes it: key fields, then kid and alg."""
        return {**_public_jwk(self.private_key), "kid": self.kid, "alg": self.alg}

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        """Sign with a Better Auth header ({alg, kid} only) plus any extra parameters."""
        headers: dict[str, Any] = {"kid": self.kid, "typ": None, **header}
        return jwt.encode(payload, self.private_key, algorithm=self.alg, headers=headers)


def better_auth_claims(
    sub: str | None, origin: str, *, ttl: float = 900, **claims: Any
) -> dict[str, Any]:
    """The payload Better Auth's JWT plugin issues: the user object, then iat/sub/exp/iss/aud."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "id": sub,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "emailVerified": True,
        "image": None,
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00.000Z",
        "iat": now,
        "sub": sub,
        "exp": int(now + ttl),
        "iss": origin,
        "aud": origin,
    }
    if sub is None:
        del payload["sub"]
    payload.update(claims)
    return {key: value for key, value in payload.items() if value is not _DROP}


_DROP: Any = object()
DROP = _DROP
"""Pass as a claim's value to `better_auth_claims` to leave that claim out."""


class JwksServer:
    """Serves ``{"keys": [...]}`` at /api/auth/jwks on 127.0.0.1, counting fetches.

    Keys can be added (rotation) and removed while it runs; ``stop()`` closes the port,
    so fetches fail with "connection refused" as when the auth server is down.
    Setting ``answer`` to (status, body) makes it answer that instead of the key set;
    ``delay`` (seconds) makes it slow.
    """

    def __init__(self) -> None:
        self._keys: dict[str, SigningKey] = {}
        self._lock = threading.Lock()
        self.fetches = 0
        self.requests: list[str] = []
        self.answer: tuple[int, bytes] | None = None
        self.delay = 0.0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._running = True

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_key(self, alg: str = "EdDSA", kid: str | None = None) -> SigningKey:
        key = SigningKey(alg) if kid is None else SigningKey(alg, kid)
        with self._lock:
            self._keys[key.kid] = key
        return key

    def remove_key(self, kid: str) -> None:
        with self._lock:
            del self._keys[kid]

    def key_set(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk for key in self._keys.values()]}

    def token(self, key: SigningKey, sub: str | None, **claims: Any) -> str:
        """A valid Better Auth token for `sub`, signed by `key`, issued by this server."""
        return key.sign(better_auth_claims(sub, self.origin, **claims))

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                if self.path != JWKS_PATH:
                    self._send(404, b'{"error":"not found"}')
                    return
                with server._lock:
                    server.fetches += 1
                time.sleep(server.delay)
                if server.answer is not None:
                    self._send(*server.answer)
                    return
                self._send(200, json.dumps(server.key_set()).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                # Better Auth sends no Cache-Control on its JWKS.
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
