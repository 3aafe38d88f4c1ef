"""Authentication: real signatures, a real JWKS over HTTP, and every refusal a 401 problem.

Tokens are shaped like Better Auth's (header {alg, kid}; the user object, iat, sub, exp,
iss, aud) and signed with real keys; the service fetches the public keys from a local
stand-in of Better Auth's /api/auth/jwks (tests/jwks_server.py). Each refusal is checked
twice: against the verifier built from Settings, and through the HTTP app. The auth
settings on their own are in tests/unit/test_auth_settings.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.testclient import TestClient

from api.auth import AuthenticationFailed, KeysUnavailable, TokenVerifier
from api.services import build_verifier
from api.settings import Settings
from tests.jwks_server import DROP, JWKS_PATH, JwksServer, SigningKey, better_auth_claims
from tests.support import (
    SECRET,
    assert_problem,
    bearer,
    free_port,
    make_settings,
    mint,
    new_user_id,
    serving,
)

LEEWAY = 30
VICTIM = "u_victim"
MODES = ("jwks", "secret", "both")


def now() -> int:
    return int(time.time())


def mode_settings(mode: str, data_dir: Path, origin: str, **overrides: Any) -> Settings:
    """JWKS only (Better Auth), shared secret only, or both at once."""
    values: dict[str, Any] = {"jwt_leeway_seconds": LEEWAY}
    if mode in ("jwks", "both"):
        values["better_auth_url"] = origin
    if mode == "jwks":
        values["better_auth_secret"] = None
    values.update(overrides)
    return make_settings(None, data_dir, **values)


def tasks_url(user_id: str) -> str:
    return f"/api/{user_id}/tasks"


# Hand-built tokens ----------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())


def unsigned(header: Any, payload: Any, signature: bytes = b"") -> str:
    return f"{segment(header)}.{segment(payload)}.{b64url(signature)}"


def hs256_with(key: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """HMAC-signed with any bytes, which PyJWT itself refuses to do with a public key."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def ed25519_signed(key: SigningKey, header: Any, payload: Any) -> str:
    """Correctly signed by `key`, whatever the header and payload hold."""
    assert isinstance(key.private_key, ed25519.Ed25519PrivateKey)
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64url(key.private_key.sign(signing_input.encode()))}"


def replace_segment(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def flip_signature(token: str) -> str:
    # A middle character: the last one may only carry padding bits.
    signature = token.rsplit(".", 1)[1]
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return replace_segment(token, 2, signature[:middle] + flipped + signature[middle + 1 :])


# One JWKS server and an app per mode, shared by the tests that change nothing ------


@dataclass
class World:
    jwks: JwksServer
    keys: dict[str, SigningKey]
    attacker: SigningKey
    clients: dict[str, TestClient]
    verifiers: dict[str, TokenVerifier]

    @property
    def origin(self) -> str:
        return self.jwks.origin

    @property
    def ed(self) -> SigningKey:
        return self.keys["EdDSA"]

    @property
    def rsa(self) -> SigningKey:
        return self.keys["RS256"]

    def claims(self, sub: str | None = VICTIM, **claims: Any) -> dict[str, Any]:
        return better_auth_claims(sub, self.origin, **claims)

    def token(self, alg: str = "EdDSA", sub: str | None = VICTIM, **claims: Any) -> str:
        return self.jwks.token(self.keys[alg], sub, **claims)

    def hs256(self, sub: str | None = VICTIM, secret: str = SECRET, **claims: Any) -> str:
        """What a frontend signing with BETTER_AUTH_SECRET sends, with iss/aud set."""
        return jwt.encode(self.claims(sub, **claims), secret, algorithm="HS256")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    jwks = JwksServer()
    keys = {alg: jwks.add_key(alg) for alg in ("EdDSA", "RS256", "PS256", "ES256", "ES512")}
    # A made-up kid waits for the next fetch the cooldown allows: kept short here.
    settings = {
        mode: mode_settings(
            mode,
            tmp_path_factory.mktemp(f"auth-{mode}"),
            jwks.origin,
            jwks_refresh_cooldown_seconds=0.1,
        )
        for mode in MODES
    }
    with ExitStack() as stack:
        stack.callback(jwks.stop)
        yield World(
            jwks=jwks,
            keys=keys,
            attacker=SigningKey("EdDSA"),
            clients={mode: stack.enter_context(serving(settings[mode])) for mode in MODES},
            verifiers={mode: build_verifier(settings[mode]) for mode in MODES},
        )


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    """A JWKS server of the test's own, for tests that rotate keys or stop it."""
    server = JwksServer()
    yield server
    server.stop()


# Accepted -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["EdDSA", "RS256", "PS256", "ES256", "ES512"])
def test_jwks_algorithms_are_accepted(world: World, alg: str) -> None:
    user_id = new_user_id()
    principal = world.verifiers["jwks"].verify(world.token(alg, user_id))
    assert principal.user_id == user_id
    assert principal.roles == frozenset()


@pytest.mark.parametrize("alg", ["EdDSA", "RS256", "ES256"])
@pytest.mark.parametrize("mode", ["jwks", "both"])
def test_jwks_tokens_work_over_http(world: World, mode: str, alg: str) -> None:
    user_id = new_user_id()
    headers = bearer(world.token(alg, user_id))
    client = world.clients[mode]
    created = client.post(tasks_url(user_id), json={"title": "signed"}, headers=headers)
    assert created.status_code == 201, created.text
    listed = client.get(tasks_url(user_id), headers=headers)
    assert listed.status_code == 200
    assert [task["id"] for task in listed.json()] == [created.json()["id"]]


def test_hs256_with_the_shared_secret_is_accepted(world: World) -> None:
    user_id = new_user_id()
    # Secret-only mode checks no iss/aud: a plain HS256 token as a frontend signs it.
    token = mint(user_id)
    assert world.verifiers["secret"].verify(token).user_id == user_id
    assert world.clients["secret"].get(tasks_url(user_id), headers=bearer(token)).status_code == 200


def test_both_modes_route_each_token_by_its_alg(world: World) -> None:
    user_id = new_user_id()
    client = world.clients["both"]
    for token in (world.token("EdDSA", user_id), world.hs256(user_id)):
        assert world.verifiers["both"].verify(token).user_id == user_id
        assert client.get(tasks_url(user_id), headers=bearer(token)).status_code == 200


def test_expired_within_the_leeway_is_accepted(world: World) -> None:
    user_id = new_user_id()
    token = world.token("EdDSA", user_id, exp=now() - LEEWAY // 3)
    assert world.verifiers["both"].verify(token).user_id == user_id
    assert world.clients["both"].get(tasks_url(user_id), headers=bearer(token)).status_code == 200


def test_lowercase_bearer_scheme_is_accepted(world: World) -> None:
    user_id = new_user_id()
    headers = {"Authorization": f"bearer {world.token('EdDSA', user_id)}"}
    assert world.clients["jwks"].get(tasks_url(user_id), headers=headers).status_code == 200


# Refused: each case names the mode it is presented to ------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    mode: str
    build: Callable[[World], str]


def _no_kid(w: World) -> str:
    key = w.ed.private_key
    return jwt.encode(w.claims(), key, algorithm="EdDSA", headers={"typ": None})


def _unsigned_with_alg(alg: str, w: World) -> str:
    return unsigned({"alg": alg, "kid": w.ed.kid}, w.claims())


def _other_hmac(alg: str, w: World) -> str:
    """The right secret with an HMAC other than HS256."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(w.claims(), SECRET, algorithm=alg)


def _tampered_payload(w: World) -> str:
    # The attacker's own valid token, with the payload swapped for the victim's.
    own = w.token("EdDSA", "u_attacker")
    return replace_segment(own, 1, segment(w.claims(VICTIM)))


def _rsa_public_pem(w: World) -> bytes:
    return w.rsa.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ed_public_raw(w: World) -> bytes:
    return w.ed.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


ATTACKS = [
    # Claims
    Attack("expired-beyond-leeway", "both", lambda w: w.token(exp=now() - LEEWAY - 60)),
    Attack("hs256-expired", "secret", lambda w: mint(VICTIM, ttl=-LEEWAY - 60)),
    Attack("wrong-issuer", "both", lambda w: w.token(iss="https://evil.example")),
    Attack("issuer-with-path", "both", lambda w: w.token(iss=w.origin + "/api/auth")),
    Attack("issuer-trailing-slash", "both", lambda w: w.token(iss=w.origin + "/")),
    Attack("wrong-audience", "both", lambda w: w.token(aud="https://other.example")),
    Attack("no-audience", "both", lambda w: w.token(aud=DROP)),
    Attack("no-issuer", "both", lambda w: w.token(iss=DROP)),
    Attack("no-exp", "both", lambda w: w.token(exp=DROP)),
    Attack("exp-not-a-number", "both", lambda w: w.token(exp="tomorrow")),
    Attack("exp-overflows-a-float", "both", lambda w: w.token(exp=10**400)),
    Attack("no-sub", "both", lambda w: w.token(sub=None)),
    Attack("empty-sub", "both", lambda w: w.token(sub="")),
    Attack("numeric-sub", "both", lambda w: w.ed.sign({**w.claims(), "sub": 42})),
    Attack("issued-in-the-future", "both", lambda w: w.token(iat=now() + 3600)),
    Attack("hs256-no-iss-aud-when-url-set", "both", lambda w: mint(VICTIM)),
    Attack("hs256-wrong-issuer", "both", lambda w: w.hs256(iss="https://evil.example")),
    # alg none and algorithms outside a mode's list
    *(
        Attack(f"alg-{alg}-{mode}-mode", mode, partial(_unsigned_with_alg, alg))
        for alg in ("none", "None", "NONE")
        for mode in ("jwks", "both")
    ),
    Attack("alg-none-secret-mode", "secret", lambda w: unsigned({"alg": "none"}, w.claims())),
    Attack("alg-empty", "both", lambda w: unsigned({"alg": "", "kid": w.ed.kid}, w.claims())),
    Attack("hs384-with-secret", "secret", partial(_other_hmac, "HS384")),
    Attack("hs512-with-secret", "both", partial(_other_hmac, "HS512")),
    # Secrets and signatures
    Attack("wrong-secret", "secret", lambda w: mint(VICTIM, secret="not-the-secret-" + "x" * 32)),
    Attack("wrong-secret-both", "both", lambda w: w.hs256(secret="not-the-secret-" + "x" * 32)),
    Attack("tampered-signature", "both", lambda w: flip_signature(w.token())),
    Attack("tampered-rs256-signature", "both", lambda w: flip_signature(w.token("RS256"))),
    Attack("tampered-es256-signature", "both", lambda w: flip_signature(w.token("ES256"))),
    Attack("tampered-hs256-signature", "both", lambda w: flip_signature(w.hs256())),
    Attack("truncated-signature", "both", lambda w: w.token()[:-20]),
    Attack("no-signature", "both", lambda w: w.token().rsplit(".", 1)[0] + "."),
    Attack("tampered-payload", "both", _tampered_payload),
    # Algorithm and key confusion
    Attack(
        "hs256-signed-with-rsa-public-pem",
        "both",
        lambda w: hs256_with(_rsa_public_pem(w), {"alg": "HS256", "kid": w.rsa.kid}, w.claims()),
    ),
    Attack(
        "hs256-signed-with-rsa-jwk",
        "both",
        lambda w: hs256_with(json.dumps(w.rsa.jwk).encode(), {"alg": "HS256"}, w.claims()),
    ),
    Attack(
        "hs256-signed-with-ed25519-public-key",
        "both",
        lambda w: hs256_with(_ed_public_raw(w), {"alg": "HS256", "kid": w.ed.kid}, w.claims()),
    ),
    Attack(
        "eddsa-header-naming-the-rsa-key",
        "both",
        lambda w: ed25519_signed(w.ed, {"alg": "EdDSA", "kid": w.rsa.kid}, w.claims()),
    ),
    Attack(
        "ps256-signature-on-an-rs256-key",
        "both",
        lambda w: jwt.encode(
            w.claims(), w.rsa.private_key, "PS256", headers={"kid": w.rsa.kid, "typ": None}
        ),
    ),
    Attack("hs256-in-jwks-only-mode", "jwks", lambda w: w.hs256()),
    Attack("eddsa-in-secret-only-mode", "secret", lambda w: w.token()),
    Attack("rs256-in-secret-only-mode", "secret", lambda w: w.token("RS256")),
    # Key ids
    Attack("unknown-kid", "both", lambda w: w.ed.sign(w.claims(), kid=secrets.token_urlsafe(24))),
    Attack("no-kid", "both", _no_kid),
    Attack("empty-kid", "both", lambda w: w.ed.sign(w.claims(), kid="")),
    Attack(
        "numeric-kid",
        "both",
        lambda w: ed25519_signed(w.ed, {"alg": "EdDSA", "kid": 7}, w.claims()),
    ),
    Attack("attacker-key-own-kid", "both", lambda w: w.attacker.sign(w.claims())),
    Attack("attacker-key-real-kid", "both", lambda w: w.attacker.sign(w.claims(), kid=w.ed.kid)),
    Attack(
        "unknown-critical-header",
        "both",
        lambda w: ed25519_signed(
            w.ed, {"alg": "EdDSA", "kid": w.ed.kid, "crit": ["x-new"], "x-new": 1}, w.claims()
        ),
    ),
    # Size and shape
    Attack("oversized", "both", lambda w: w.token(padding="x" * 9000)),
    Attack("oversized-hs256", "secret", lambda w: mint(VICTIM, padding="x" * 9000)),
    Attack("empty", "both", lambda w: ""),
    Attack("one-word", "both", lambda w: "not-a-jwt"),
    Attack("two-segments", "both", lambda w: "abc.def"),
    Attack("three-junk-segments", "both", lambda w: "abc.def.ghi"),
    Attack("dots", "both", lambda w: "..."),
    Attack("four-segments", "both", lambda w: w.token() + ".abc"),
    Attack("bad-base64", "both", lambda w: "eyJ!!!.eyJ???.sig"),
    Attack("header-not-json", "both", lambda w: f"{segment(b'{alg')}.{segment(w.claims())}.c2ln"),
    Attack("header-json-array", "both", lambda w: unsigned(["EdDSA"], w.claims())),
    Attack("header-no-alg", "both", lambda w: unsigned({"kid": w.ed.kid}, w.claims())),
    Attack("header-alg-list", "both", lambda w: unsigned({"alg": ["EdDSA"]}, w.claims())),
    Attack("header-alg-object", "both", lambda w: unsigned({"alg": {"a": 1}}, w.claims())),
    Attack("header-alg-number", "both", lambda w: unsigned({"alg": 256}, w.claims())),
    Attack(
        "signed-payload-not-json",
        "both",
        lambda w: ed25519_signed(w.ed, {"alg": "EdDSA", "kid": w.ed.kid}, b"{not json"),
    ),
    Attack(
        "signed-payload-json-array",
        "both",
        lambda w: ed25519_signed(w.ed, {"alg": "EdDSA", "kid": w.ed.kid}, [VICTIM]),
    ),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_is_refused_by_the_verifier(world: World, attack: Attack) -> None:
    with pytest.raises(AuthenticationFailed):
        world.verifiers[attack.mode].verify(attack.build(world))


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_is_refused_over_http(world: World, attack: Attack) -> None:
    token = attack.build(world)
    response = world.clients[attack.mode].get(tasks_url(VICTIM), headers=bearer(token))
    assert_problem(response, 401, token)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic dXNlcjpwYXNzd29yZA==",
        "Basic {token}",
        "Token {token}",
        "{token}",
        "Bearer",
        "Bearer ",
        "Bearer  {token} extra",
    ],
)
def test_only_a_bearer_token_is_accepted(world: World, authorization: str | None) -> None:
    token = world.token()
    headers = {} if authorization is None else {"Authorization": authorization.format(token=token)}
    response = world.clients["both"].get(tasks_url(VICTIM), headers=headers)
    assert_problem(response, 401, token)


def test_jku_x5u_and_jwk_headers_are_ignored(world: World) -> None:
    """Keys come only from the configured JWKS, never from where a token points."""
    elsewhere = JwksServer()
    try:
        impostor = elsewhere.add_key("EdDSA", kid=world.ed.kid)
        jku = elsewhere.origin + JWKS_PATH
        claims = world.claims()
        refused = [
            world.attacker.sign(claims, jku=jku),
            world.attacker.sign(claims, x5u=jku),
            world.attacker.sign(claims, jwk=world.attacker.jwk),
            world.attacker.sign(
                claims, kid=world.ed.kid, jwk={**world.attacker.jwk, "kid": world.ed.kid}
            ),
            impostor.sign(claims, jku=jku),
        ]
        for token in refused:
            with pytest.raises(AuthenticationFailed):
                world.verifiers["both"].verify(token)
            response = world.clients["both"].get(tasks_url(VICTIM), headers=bearer(token))
            assert_problem(response, 401, token)
        # The real key with the same pointers: verified against the JWKS, pointers unused.
        genuine = world.ed.sign(claims, jku=jku, x5u=jku, jwk=world.attacker.jwk)
        assert (
            world.clients["both"].get(tasks_url(VICTIM), headers=bearer(genuine)).status_code == 200
        )
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()


# Roles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "may_read"),
    [
        ("admin", True),
        (["auditor"], True),
        ("user,admin", True),
        ("user, auditor", True),
        (["user", "admin"], True),
        ("user", False),
        (["user"], False),
        ("administrator", False),
        ("", False),
        (None, False),
        ({"admin": True}, False),
    ],
)
def test_role_claim_grants_auditors_read_access(world: World, role: Any, may_read: bool) -> None:
    owner = new_user_id()
    reader = world.token("EdDSA", new_user_id(), role=role)
    client = world.clients["both"]
    listed = client.get(tasks_url(owner), headers=bearer(reader))
    if may_read:
        assert listed.status_code == 200, listed.text
    else:
        assert_problem(listed, 403, reader)
    # Nobody writes another user's tasks, auditor or not.
    written = client.post(tasks_url(owner), json={"title": "x"}, headers=bearer(reader))
    assert_problem(written, 403, reader)


# Key fetching and caching -------------------------------------------------------------


def test_one_key_is_fetched_once_for_many_requests(jwks: JwksServer, tmp_path: Path) -> None:
    key = jwks.add_key()
    user_id = new_user_id()
    with serving(mode_settings("jwks", tmp_path, jwks.origin)) as client:
        token = jwks.token(key, user_id)
        for _ in range(50):
            assert client.get(tasks_url(user_id), headers=bearer(token)).status_code == 200
        # Distinct tokens too, so the key cache is used and not only the token cache.
        for n in range(50):
            fresh = jwks.token(key, user_id, jti=str(n))
            assert client.get(tasks_url(user_id), headers=bearer(fresh)).status_code == 200
    assert jwks.fetches == 1


def test_unknown_kids_cannot_hammer_the_auth_server(jwks: JwksServer, tmp_path: Path) -> None:
    key = jwks.add_key()
    cooldown = 0.5
    settings = mode_settings("jwks", tmp_path, jwks.origin, jwks_refresh_cooldown_seconds=cooldown)

    def attempt(client: TestClient) -> None:
        token = key.sign(better_auth_claims(VICTIM, jwks.origin), kid=secrets.token_urlsafe(24))
        assert_problem(client.get(tasks_url(VICTIM), headers=bearer(token)), 401, token)

    with serving(settings) as client, ThreadPoolExecutor(20) as pool:
        started = time.monotonic()
        list(pool.map(lambda _: attempt(client), range(60)))
        elapsed = time.monotonic() - started
    # Each made-up kid waits for the next allowed fetch, shared by all waiting then.
    assert jwks.fetches <= 1 + elapsed / cooldown


def test_a_rotated_key_works_on_first_use_inside_the_cooldown(
    jwks: JwksServer, tmp_path: Path
) -> None:
    old = jwks.add_key()
    user_id = new_user_id()
    settings = mode_settings("jwks", tmp_path, jwks.origin, jwks_refresh_cooldown_seconds=0.3)
    with serving(settings) as client:
        url = tasks_url(user_id)
        assert client.get(url, headers=bearer(jwks.token(old, user_id))).status_code == 200
        new = jwks.add_key("RS256")
        # Inside the cooldown: the request waits for the next allowed fetch, not a 401.
        assert client.get(url, headers=bearer(jwks.token(new, user_id))).status_code == 200
        # The old key stays in the set for its grace period and keeps working.
        again = bearer(jwks.token(old, user_id, jti="again"))
        assert client.get(url, headers=again).status_code == 200
    assert jwks.fetches == 2


def test_a_withdrawn_key_is_refused_once_the_cache_expires(
    jwks: JwksServer, tmp_path: Path
) -> None:
    withdrawn, kept = jwks.add_key(), jwks.add_key("ES256")
    user_id = new_user_id()
    settings = mode_settings(
        "jwks",
        tmp_path,
        jwks.origin,
        jwks_cache_seconds=0.2,
        jwks_refresh_cooldown_seconds=0,
    )
    with serving(settings) as client:
        url = tasks_url(user_id)
        assert client.get(url, headers=bearer(jwks.token(withdrawn, user_id))).status_code == 200
        jwks.remove_key(withdrawn.kid)
        time.sleep(0.25)
        late = jwks.token(withdrawn, user_id, jti="late")
        assert_problem(client.get(url, headers=bearer(late)), 401, late)
        assert client.get(url, headers=bearer(jwks.token(kept, user_id))).status_code == 200


def test_known_keys_keep_working_while_the_auth_server_is_down(
    jwks: JwksServer, tmp_path: Path
) -> None:
    key = jwks.add_key()
    user_id = new_user_id()
    settings = mode_settings(
        "jwks",
        tmp_path,
        jwks.origin,
        jwks_cache_seconds=0.2,
        jwks_refresh_cooldown_seconds=0.1,
    )
    with serving(settings) as client:
        url = tasks_url(user_id)
        assert client.get(url, headers=bearer(jwks.token(key, user_id))).status_code == 200
        jwks.stop()
        time.sleep(0.25)  # the cached set is now stale and the cooldown over
        for n in range(5):
            token = jwks.token(key, user_id, jti=str(n))
            assert client.get(url, headers=bearer(token)).status_code == 200
        # A key never seen may be a rotation that cannot be fetched: retry, not sign out.
        unseen = jwks.token(SigningKey("EdDSA"), user_id)
        response = client.get(url, headers=bearer(unseen))
        assert_problem(response, 503, unseen)
        with pytest.raises(KeysUnavailable):
            build_verifier(settings).verify(unseen)


def test_concurrent_first_requests_share_one_fetch(jwks: JwksServer, tmp_path: Path) -> None:
    key = jwks.add_key()
    jwks.delay = 0.3
    verifier = build_verifier(mode_settings("jwks", tmp_path, jwks.origin))
    tokens = [jwks.token(key, new_user_id()) for _ in range(8)]
    with ThreadPoolExecutor(len(tokens)) as pool:
        principals = list(pool.map(verifier.verify, tokens))
    assert len({principal.user_id for principal in principals}) == len(tokens)
    assert jwks.fetches == 1


def test_a_slow_refresh_does_not_hold_up_known_keys(jwks: JwksServer, tmp_path: Path) -> None:
    key = jwks.add_key()
    settings = mode_settings(
        "jwks", tmp_path, jwks.origin, jwks_cache_seconds=0.1, jwks_refresh_cooldown_seconds=0
    )
    verifier = build_verifier(settings)
    verifier.verify(jwks.token(key, new_user_id()))
    time.sleep(0.15)  # stale: the next request refreshes
    jwks.delay = 1.0
    with ThreadPoolExecutor(1) as pool:
        refreshing = pool.submit(verifier.verify, jwks.token(key, new_user_id()))
        while jwks.fetches < 2:
            time.sleep(0.01)
        started = time.monotonic()
        verifier.verify(jwks.token(key, new_user_id()))
        assert time.monotonic() - started < 0.5
        refreshing.result()
    assert jwks.fetches == 2


@pytest.mark.parametrize(
    "answer",
    [
        None,  # nothing listening
        (500, b"Internal Server Error"),
        (404, b'{"error":"not found"}'),
        (200, b"<html>not json</html>"),
        (200, b'{"keys": []}'),
        (200, b'{"keys": [{"kty": "RSA", "kid": "broken"}]}'),
        (200, b"[]"),
    ],
    ids=["refused", "500", "404", "html", "no-keys", "unusable-key", "not-an-object"],
)
def test_no_usable_key_set_answers_503(
    jwks: JwksServer, tmp_path: Path, answer: tuple[int, bytes] | None
) -> None:
    key = jwks.add_key()
    if answer is None:
        origin = f"http://127.0.0.1:{free_port()}"
    else:
        origin, jwks.answer = jwks.origin, answer
    settings = mode_settings("jwks", tmp_path, origin, jwks_refresh_cooldown_seconds=30)
    user_id = new_user_id()
    with serving(settings) as client:
        for n in range(3):
            token = key.sign(better_auth_claims(user_id, origin, jti=str(n)))
            assert_problem(client.get(tasks_url(user_id), headers=bearer(token)), 503, token)
    assert jwks.fetches <= 1


# Logs -------------------------------------------------------------------------------


def test_no_log_line_holds_a_token_a_secret_or_a_stack_trace(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Every attack again, with all loggers at DEBUG: the logs stay clean too."""
    caplog.set_level(logging.DEBUG)
    tokens = []
    for attack in ATTACKS:
        token = attack.build(world)
        tokens.append(token)
        world.clients[attack.mode].get(tasks_url(VICTIM), headers=bearer(token))
    assert caplog.records, "nothing was logged: the check would prove nothing"
    logged = caplog.text + "".join(
        str(record.exc_info) + str(record.stack_info) for record in caplog.records
    )
    assert "Traceback" not in logged
    assert SECRET not in logged
    for token in tokens:
        # Any of a token's signed parts would give it away.
        for part in token.split("."):
            if len(part) > 16:
                assert part not in logged
