"""Tokens (spec section 3): verification in ``hello``, in-band refresh, expiry warning, expiry.

Checks that need crafted claims (expired, not yet valid, odd claims, another issuer) have them
signed by the deployment's signer: its shared secret, or its token command (spec 14.6), which
signs whatever claims it is given. Only tokens the signer must never produce (``alg: none``,
altered after signing, signed with another key) are made by the suite, with keys of its own.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import math
import time
from typing import Any

import jwt
import pytest

from unisock_conformance.checks.conftest import Connect, User, subscription_cap
from unisock_conformance.deployment import (
    NOT_RUN_PREFIX,
    Deployment,
    Names,
    ServerInfo,
    not_applicable,
    not_run,
    require_secret,
)
from unisock_conformance.wire import Conn, ConnGroup, open_conn

Frame = dict[str, Any]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _forged(token: str) -> str:
    """The token with its signature altered in the first character."""
    header, payload, signature = token.split(".")
    first = "A" if signature[0] != "A" else "B"
    return f"{header}.{payload}.{first}{signature[1:]}"


_FOREIGN_SECRET = "conformance-not-the-secret-" + "k" * 32


def _shared_secret(deployment: Deployment, why: str) -> str:
    """The deployment's HS256 secret, for the few checks that must build a token byte by
    byte; a run whose tokens come from a token command does not run them."""
    if deployment.secret is None:
        not_run(f"needs --secret: {why}")
    return deployment.secret


@functools.cache
def _foreign_key(alg: str) -> Any:
    """A private key of the suite's own for ``alg``: no deployment trusts it."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return _FOREIGN_SECRET


def _signer_alg(deployment: Deployment, names: Names) -> str:
    """The algorithm of the deployment's own tokens (HS256 with a shared secret)."""
    token = deployment.mint(names.tenant(), names.user())
    return str(jwt.get_unverified_header(token).get("alg", "HS256"))


def _foreign(deployment: Deployment, names: Names, claims: dict[str, Any]) -> str:
    """``claims`` signed with the deployment's algorithm but a key of the suite's own."""
    alg = _signer_alg(deployment, names)
    key = _foreign_key(alg) if alg != "HS256" else _FOREIGN_SECRET
    return deployment.sign(claims, algorithm=alg, key=key)


def _late(deployment: Deployment, seconds: float) -> float:
    return deployment.timeout(max(0.3, 0.25 * seconds))


def _short_ttl(deployment: Deployment) -> int:
    """A token lifetime (whole seconds) that outlasts the hello on a slow deployment."""
    return max(2, math.ceil(deployment.timeout(1.0)) + 1)


def _token_parts(token: str) -> list[str]:
    """Pieces of a token an error must never contain (UNI-ERR-8): long runs of each part."""
    parts = [part for part in token.split(".") if part]
    return [part[i : i + 16] for part in parts for i in range(0, max(1, len(part) - 15), 8)]


def _assert_no_token_in(frame: Frame, token: str) -> None:
    text = json.dumps({k: frame.get(k) for k in ("message", "details")})
    for piece in _token_parts(token):
        assert piece not in text, f"error carries part of a token: {frame}"


def _assert_rejected(connect: Connect, token: str, case: str) -> None:
    """The hello is refused with exactly 4100 ``auth_failed`` and nothing else (UNI-LC-7)."""
    conn = connect(hello=False)
    conn.send({"type": "hello", "id": "h1", "token": token})
    deadline = time.monotonic() + conn.default_timeout
    while not conn.closed.wait(0.01):
        assert not conn.frames, f"{case}: token accepted: {conn.frames[0]}"
        assert time.monotonic() < deadline, f"{case}: the server neither closed nor answered"
    code, reason = conn.expect_close()
    assert code == 4100, f"{case}: closed with {code} {reason!r}, expected 4100"
    assert reason == "auth_failed", f"{case}: close reason {reason!r} reveals more than auth_failed"
    assert conn.frames == [], f"{case}: server sent messages before closing: {conn.frames}"


def _accepted(connect: Connect, token: str) -> Conn:
    conn = connect(hello=False)
    conn.send({"type": "hello", "token": token})
    frame = conn.expect(None, skip=())
    assert frame["type"] == "welcome", f"token refused: {frame} / close {conn.close_code}"
    conn.set_welcome(frame)
    return conn


# -- 3.3 verification ------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-AUTH-4", "UNI-LC-7", "UNI-SEC-18")
@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"], ids=["empty-sig", "some-sig"])
def test_server_rejects_token_with_alg_none(
    connect: Connect, deployment: Deployment, names: Names, alg: str, signature: str
) -> None:
    claims = deployment.claims(names.tenant(), names.user(), subscribe=(">",))
    token = f"{_b64json({'alg': alg, 'typ': 'JWT'})}.{_b64json(claims)}.{signature}"
    _assert_rejected(connect, token, f"alg {alg!r}")


@pytest.mark.requirement("UNI-AUTH-3", "UNI-LC-7", "UNI-SEC-18")
@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_server_rejects_token_with_unconfigured_hmac_alg(
    connect: Connect, deployment: Deployment, names: Names, alg: str
) -> None:
    """With a shared secret the token is signed with it; a deployment whose tokens come from
    a token command has no HMAC key the suite knows, so the suite signs with its own."""
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    key = deployment.secret or _FOREIGN_SECRET
    _assert_rejected(connect, deployment.sign(claims, algorithm=alg, key=key), alg)


@pytest.mark.requirement("UNI-AUTH-3", "UNI-LC-7")
@pytest.mark.parametrize(
    "header",
    [{"alg": "XS256", "typ": "JWT"}, {"typ": "JWT"}, {"alg": "", "typ": "JWT"}, {"alg": 256}],
    ids=["unknown-alg", "no-alg", "empty-alg", "numeric-alg"],
)
def test_server_rejects_token_with_unknown_or_missing_alg(
    connect: Connect, deployment: Deployment, names: Names, header: Frame
) -> None:
    claims = deployment.claims(names.tenant(), names.user())
    token = f"{_b64json(header)}.{_b64json(claims)}.{_b64(b'x' * 32)}"
    _assert_rejected(connect, token, json.dumps(header))


@pytest.mark.requirement("UNI-AUTH-5", "UNI-AUTH-3", "UNI-LC-7")
@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA", "PS256"])
def test_server_rejects_hmac_signature_under_asymmetric_alg(
    connect: Connect, deployment: Deployment, names: Names, alg: str
) -> None:
    """Algorithm confusion: a token of the deployment relabelled with another algorithm, and
    an HMAC over it (with the shared secret, or with a key of the suite's own when tokens come
    from a token command), labelled as an asymmetric algorithm, must not verify with any key."""
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    good = deployment.sign(claims)
    header, payload, signature = good.split(".")
    label = alg if json.loads(_unb64(header)).get("alg") != alg else "HS256"
    token = f"{_b64json({'alg': label, 'typ': 'JWT'})}.{payload}.{signature}"
    _assert_rejected(connect, token, label)
    # Re-sign the relabelled header with HMAC so that the signature matches its input.
    signing_input = f"{_b64json({'alg': alg, 'typ': 'JWT'})}.{payload}".encode()
    secret = deployment.secret or _FOREIGN_SECRET
    mac = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    _assert_rejected(connect, f"{signing_input.decode()}.{_b64(mac)}", f"{alg} with HMAC")


def _altered(token: str, kind: str) -> str:
    header, payload, signature = token.split(".")
    if kind == "payload-sub":
        claims = json.loads(_unb64(payload))
        claims["sub"] = claims["sub"] + "x"
        return f"{header}.{_b64json(claims)}.{signature}"
    if kind == "payload-grants":
        claims = json.loads(_unb64(payload))
        claims["grants"] = {"subscribe": [">", "$sys.>"], "publish": [">", "$sys.>"]}
        return f"{header}.{_b64json(claims)}.{signature}"
    if kind == "payload-exp":
        claims = json.loads(_unb64(payload))
        claims["exp"] = int(claims.get("exp", 0)) + 86400
        return f"{header}.{_b64json(claims)}.{signature}"
    if kind == "header-kid":
        fields = json.loads(_unb64(header))
        fields["kid"] = "attacker"
        return f"{_b64json(fields)}.{payload}.{signature}"
    if kind == "signature-flipped":
        return _forged(token)
    if kind == "signature-truncated":
        return f"{header}.{payload}.{signature[:-4]}"
    if kind == "signature-empty":
        return f"{header}.{payload}."
    if kind == "signature-of-other-token":
        return f"{header}.{payload}.{_b64(b'0' * 32)}"
    raise AssertionError(kind)


ALTERATIONS = [
    "payload-sub",
    "payload-grants",
    "payload-exp",
    "header-kid",
    "signature-flipped",
    "signature-truncated",
    "signature-empty",
    "signature-of-other-token",
]


def _hs256(header: Frame, claims: Frame, key: bytes) -> str:
    """An HS256 JWS over ``header`` and ``claims`` keyed with exactly ``key``."""
    signing_input = f"{_b64json(header)}.{_b64json(claims)}"
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _other_readings(secret: str) -> dict[str, bytes]:
    """Key octets a server might wrongly derive from the configured secret string."""
    raw = secret.encode("utf-8")
    readings = {"sha256": hashlib.sha256(raw).digest(), "utf-16": secret.encode("utf-16-le")}
    with contextlib.suppress(ValueError):
        readings["base64"] = base64.b64decode(secret + "=" * (-len(secret) % 4), validate=True)
    with contextlib.suppress(ValueError):
        readings["base64url"] = _unb64(secret)
    with contextlib.suppress(ValueError):
        readings["hex"] = bytes.fromhex(secret)
    if secret.strip() != secret:
        readings["trimmed"] = secret.strip().encode("utf-8")
    return {name: key for name, key in readings.items() if key and key != raw}


@pytest.mark.requirement("UNI-AUTH-27", "UNI-AUTH-6")
def test_server_keys_hs256_with_the_utf8_octets_of_the_secret(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    secret = _shared_secret(deployment, "the HS256 secret the deployment is configured with")
    header = {"alg": "HS256", "typ": "JWT"}
    claims = deployment.claims(names.tenant(), names.user())
    _accepted(connect, _hs256(header, claims, secret.encode("utf-8")))
    for name, key in _other_readings(secret).items():
        _assert_rejected(connect, _hs256(header, claims, key), f"key from the secret by {name}")


@pytest.mark.requirement("UNI-AUTH-29")
@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256"},
        {"alg": "HS256", "typ": "JWT"},
        {"alg": "HS256", "typ": "at+jwt"},
        {"alg": "HS256", "typ": "JWT", "kid": "unknown-key-id"},
        {"alg": "HS256", "kid": ""},
    ],
    ids=["no-typ", "typ-jwt", "typ-at-jwt", "unknown-kid", "empty-kid"],
)
def test_server_accepts_a_verified_token_whatever_its_typ_and_kid(
    connect: Connect, deployment: Deployment, names: Names, header: Frame
) -> None:
    secret = _shared_secret(deployment, "a token command chooses the header of its tokens")
    claims = deployment.claims(names.tenant(), names.user())
    _accepted(connect, _hs256(header, claims, secret.encode("utf-8")))


@pytest.mark.requirement("UNI-AUTH-6", "UNI-LC-7", "UNI-SEC-18")
@pytest.mark.parametrize("kind", ALTERATIONS)
def test_server_rejects_token_altered_after_signing(
    connect: Connect, deployment: Deployment, names: Names, kind: str
) -> None:
    token = deployment.mint(names.tenant(), names.user(), subscribe=("tasks.>",))
    _assert_rejected(connect, _altered(token, kind), kind)


@pytest.mark.requirement("UNI-AUTH-6", "UNI-LC-7")
def test_server_rejects_token_signed_with_another_secret(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    claims = deployment.claims(names.tenant(), names.user())
    _assert_rejected(connect, _foreign(deployment, names, claims), "foreign key")


def _bad_claims(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in base.items() if k != key}

    def with_(**changes: Any) -> dict[str, Any]:
        return {**base, **changes}

    return {
        "missing-exp": without("exp"),
        "missing-sub": without("sub"),
        "missing-tenant": without("tenant"),
        "empty-sub": with_(sub=""),
        "long-sub": with_(sub="s" * 129),
        "control-char-sub": with_(sub="ali\u0007ce"),
        "c1-control-sub": with_(sub="ali\u0085ce"),
        "uppercase-tenant": with_(tenant=base["tenant"].upper()),
        "tenant-with-dot": with_(tenant=base["tenant"] + ".x"),
        "tenant-leading-dash": with_(tenant="-" + base["tenant"]),
        "long-tenant": with_(tenant="t" * 65),
        "empty-tenant": with_(tenant=""),
        "numeric-tenant": with_(tenant=7),
        "string-exp": with_(exp=str(base["exp"])),
        "fractional-exp": with_(exp=base["exp"] + 0.5),
        "boolean-exp": with_(exp=True),
        "grants-array": with_(grants=[">"]),
        "grant-invalid-pattern": with_(grants={"subscribe": ["Tasks.>"], "publish": []}),
        "grant-not-string": with_(grants={"subscribe": [1], "publish": []}),
        "grant-bad-wildcard": with_(grants={"subscribe": ["tasks.>.x"], "publish": []}),
        "grant-sys-root": with_(grants={"subscribe": ["$sys"], "publish": []}),
        "unknown-role": with_(role="admin"),
        "empty-sid": with_(sid=""),
        "long-sid": with_(sid="s" * 129),
        "claims-not-object": {"__array__": True},
    }


_BAD_CLAIM_IDS = list(_bad_claims({"tenant": "t", "exp": 1, "sub": "s"}))


@pytest.mark.requirement("UNI-AUTH-7", "UNI-LC-7", "UNI-SEC-18")
@pytest.mark.parametrize("case", _BAD_CLAIM_IDS)
def test_server_rejects_token_whose_claims_violate_the_schema(
    connect: Connect, deployment: Deployment, names: Names, case: str
) -> None:
    require_secret(deployment)
    base = deployment.claims(names.tenant(), names.user(), subscribe=(">",), publish=(">",))
    claims = _bad_claims(base)[case]
    if case == "claims-not-object":
        if deployment.secret is None:
            pytest.skip(
                f"{NOT_RUN_PREFIX} a token command signs claim objects only (spec 14.6); "
                "a payload that is not an object needs --secret"
            )
        header = _b64json({"alg": "HS256", "typ": "JWT"})
        signing_input = f"{header}.{_b64json([base])}".encode()
        mac = hmac.new(deployment.secret.encode(), signing_input, hashlib.sha256).digest()
        token = f"{signing_input.decode()}.{_b64(mac)}"
    else:
        token = deployment.sign(claims)
    _assert_rejected(connect, token, case)


@pytest.mark.requirement("UNI-AUTH-8", "UNI-LC-7", "UNI-SEC-18")
@pytest.mark.parametrize("age_s", [0, 1, 5, 3600], ids=["exp-now", "1s-ago", "5s-ago", "1h-ago"])
def test_server_rejects_expired_token_without_leeway(
    connect: Connect, deployment: Deployment, names: Names, age_s: int
) -> None:
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    claims["exp"] = int(time.time()) - age_s
    claims["iat"] = claims["exp"] - 60
    _assert_rejected(connect, deployment.sign(claims), f"exp {age_s} s ago")


@pytest.mark.requirement("UNI-AUTH-9", "UNI-AUTH-10", "UNI-AUTH-11", "UNI-LC-7")
@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize("ahead_s", [33, 3600])
def test_server_rejects_token_not_yet_valid_beyond_30s_leeway(
    connect: Connect, deployment: Deployment, names: Names, claim: str, ahead_s: int
) -> None:
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    claims[claim] = int(time.time()) + ahead_s
    claims["exp"] = int(time.time()) + 7200
    _assert_rejected(connect, deployment.sign(claims), f"{claim} {ahead_s} s ahead")


@pytest.mark.requirement("UNI-AUTH-9", "UNI-AUTH-10", "UNI-AUTH-14")
def test_server_accepts_token_with_past_nbf_and_iat(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    claims["nbf"] = int(time.time()) - 120
    claims["iat"] = int(time.time()) - 120
    _accepted(connect, deployment.sign(claims))


def _configured_claim(deployment: Deployment, names: Names, claim: str) -> Any:
    """The ``iss``/``aud`` the deployment requires: declared, or carried by its tokens."""
    declared = deployment.issuer if claim == "iss" else deployment.audience
    value = declared or _claims(deployment.mint(names.tenant(), names.user())).get(claim)
    if value is None:
        option = "--issuer" if claim == "iss" else "--audience"
        not_applicable(
            f"the deployment declares no required {claim!r} ({option}) and its tokens carry "
            "none: the rule binds servers configured with one"
        )
    return value


@pytest.mark.requirement("UNI-AUTH-12")
def test_server_rejects_token_with_absent_or_other_issuer(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    require_secret(deployment)
    issuer = _configured_claim(deployment, names, "iss")
    claims = deployment.claims(names.tenant(), names.user())
    claims["iss"] = str(issuer) + ".evil.test"  # a prefix test would accept it
    _assert_rejected(connect, deployment.sign(claims), "other iss")
    claims.pop("iss")
    _assert_rejected(connect, deployment.sign(claims), "no iss")


@pytest.mark.requirement("UNI-AUTH-13", "UNI-AUTH-14")
def test_server_rejects_token_with_absent_or_other_audience(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    require_secret(deployment)
    audience = _configured_claim(deployment, names, "aud")
    claims = deployment.claims(names.tenant(), names.user())
    # Both forms of ``aud``, each with another audience and with one that merely starts with
    # the configured one (a substring test would accept that).
    longer = f"{audience}.other"
    for other in ("someone-else", ["someone-else"], longer, [longer]):
        claims["aud"] = other
        _assert_rejected(connect, deployment.sign(claims), f"aud {other!r}")
    claims.pop("aud")
    _assert_rejected(connect, deployment.sign(claims), "no aud")
    # An array that contains the audience among others passes the check (UNI-AUTH-14).
    claims["aud"] = ["someone-else", audience]
    _accepted(connect, deployment.sign(claims)).close()


@pytest.mark.requirement("UNI-AUTH-14")
def test_server_accepts_token_with_claims_it_does_not_define(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user(), subscribe=(">",))
    claims.update(
        {
            "jti": "conformance-1",
            "scope": "read write",
            "https://example.com/claims": {"roles": ["x"], "nested": [1, {"a": None}]},
            "permissions": None,
            "tenant_name": "Other Tenant",
        }
    )
    claims["grants"]["future"] = ["x"]
    conn = _accepted(connect, deployment.sign(claims))
    assert conn.welcome is not None and conn.welcome["session"]["tenant"] == claims["tenant"]


@pytest.mark.requirement("UNI-AUTH-15", "UNI-CH-11")
@pytest.mark.parametrize(
    "grants",
    [None, {}, {"subscribe": []}, {"publish": [">"]}],
    ids=["no-grants", "empty-object", "empty-subscribe", "publish-only"],
)
def test_server_treats_absent_grants_as_empty_and_absent_role_as_user(
    connect: Connect, deployment: Deployment, names: Names, grants: dict[str, Any] | None
) -> None:
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    claims.pop("grants")
    claims.pop("role", None)
    if grants is not None:
        claims["grants"] = grants
    conn = _accepted(connect, deployment.sign(claims))
    assert conn.welcome is not None and conn.welcome["session"]["role"] == "user"
    channel = names.channel()
    refused = conn.request({"type": "subscribe", "id": "s1", "channel": channel})
    assert refused.get("code") == "forbidden", refused
    conn.subscribe("$me.inbox")
    reply = conn.request(conn.publish_message(channel))
    if grants is not None and "publish" in grants:
        assert reply["type"] == "ack", reply
    else:
        assert reply.get("code") == "forbidden", reply
    own = conn.request(conn.publish_message("$me.inbox"))
    assert own.get("code") == "forbidden", f"$me publish without a $me grant: {own}"


@pytest.mark.requirement("UNI-AUTH-2", "UNI-LC-7")
@pytest.mark.parametrize("param", ["token", "access_token", "jwt"])
def test_server_ignores_credentials_in_the_handshake_url(
    deployment: Deployment, conn_group: ConnGroup, names: Names, param: str
) -> None:
    tenant = names.tenant()
    url_token = deployment.mint(tenant, names.user(1), subscribe=(">",))
    separator = "&" if "?" in deployment.url else "?"
    url = f"{deployment.url}{separator}{param}={url_token}"

    def open_() -> Conn:
        return open_conn(
            url,
            name=f"url-{param}",
            origin=deployment.origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
            group=conn_group,
        )

    conn = open_()
    conn.send({"type": "hello", "token": _forged(url_token)})
    code, reason = conn.expect_close()
    assert code == 4100 and conn.frames == [], f"URL credential used: {code} {reason!r}"
    conn = open_()
    welcome = conn.hello(deployment.mint(tenant, names.user(2)))
    assert welcome["session"]["sub"] == names.user(2), welcome["session"]


@pytest.mark.requirement("UNI-LC-6", "UNI-LIM-2")
def test_server_closes_4000_for_hello_token_over_8192_characters(
    connect: Connect, server_info: ServerInfo, deployment: Deployment, names: Names
) -> None:
    token = deployment.mint(names.tenant(), names.user())
    header, payload, signature = token.split(".")
    padded = f"{header}.{payload}.{signature}{'A' * (8193 - len(token))}"
    assert len(padded) == 8193
    message = json.dumps({"type": "hello", "token": padded})
    if len(message.encode()) > server_info.limits["max_message_bytes"]:
        pytest.skip(
            f"{NOT_RUN_PREFIX} a hello with an 8193-character token exceeds max_message_bytes"
        )
    conn = connect(hello=False)
    conn.send(message)
    code, reason = conn.expect_close()
    assert code == 4000 and conn.frames == [], (code, reason, conn.frames)


# -- 3.5 refresh -----------------------------------------------------------------------------------


def _refresh(conn: Conn, token: str, ident: str = "r1") -> Frame:
    return conn.request({"type": "refresh", "id": ident, "token": token})


@pytest.mark.requirement("UNI-AUTH-16", "UNI-TR-25")
def test_server_puts_same_identity_refresh_in_force(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    conn = user(tenant, sub, sid="tab-1", ttl_s=1800)
    token = deployment.mint(tenant, sub, sid="tab-1", ttl_s=7200)
    reply = _refresh(conn, token, "r-ok")
    assert reply["type"] == "refreshed" and reply["id"] == "r-ok", reply
    assert reply["expires_at"] == _claims(token)["exp"], reply


@pytest.mark.requirement("UNI-AUTH-16", "UNI-DEL-18", "UNI-DEL-12", "UNI-AUTH-25")
@pytest.mark.timing
@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "filtered"])
def test_server_delivers_for_the_whole_lifetime_of_a_refreshed_token(
    user: User, deployment: Deployment, names: Names, filtered: bool
) -> None:
    """After an in-band refresh, events keep flowing past the old ``exp`` up to the new one,
    where the connection closes 4101 (and not before)."""
    tenant, sub, channel = names.tenant(), names.user(1), names.channel()
    ttl = _short_ttl(deployment)
    bob = user(tenant, sub, ttl_s=ttl)
    assert bob.welcome is not None
    old_exp = int(bob.welcome["session"]["expires_at"])
    bob.subscribe(channel, filter={"eq": ["k", "yes"]} if filtered else None)
    reply = _refresh(bob, deployment.mint(tenant, sub, subscribe=(">",), ttl_s=ttl + 3))
    assert reply["type"] == "refreshed", reply
    new_exp = int(reply["expires_at"])
    assert new_exp >= old_exp + 2, (old_exp, reply)
    witness = user(tenant, names.user(2))
    witness.subscribe(channel)
    alice = user(tenant, names.user(0))
    stop = time.monotonic() + max(0.0, new_exp - time.time()) + _late(deployment, 1.0)
    published = 0
    while not bob.closed.is_set() and time.monotonic() < stop and published < 600:
        alice.publish(channel, attrs={"k": "yes"}, data={"n": published})
        published += 1
        bob.closed.wait(0.05)  # paces the publisher below any rate limit
    code, reason = bob.expect_close(timeout=_late(deployment, 1.0) + 1.0)
    closed_at = time.time()
    assert code == 4101, f"closed with {code} {reason!r}, expected 4101 at the new exp"
    assert closed_at >= new_exp - deployment.timeout(0.1), (
        f"closed {new_exp - closed_at:.3f} s before the refreshed token's exp {new_exp} "
        f"(the first token expired at {old_exp})"
    )
    seen = {e["offset"]: e["ts"] for e in witness.events(channel)}
    got = {e["offset"] for e in bob.events(channel)}
    # Events sequenced well before the new exp are due; the last moments may be cut by it.
    due_until_ms = new_exp * 1000 - int(deployment.timeout(0.5) * 1000)
    due = sorted(o for o, ts in seen.items() if old_exp * 1000 <= ts < due_until_ms)
    assert due, "no event was sequenced between the two expiry times"
    missed = [o for o in due if o not in got]
    assert not missed, (
        f"events sequenced after the first token's exp {old_exp} and before the refreshed "
        f"exp {new_exp} were not delivered: offsets {missed[:10]}"
    )
    late = [o for o in got if seen.get(o, 0) >= new_exp * 1000]
    assert not late, f"events sequenced at or after the refreshed exp were written: {late}"


def _mismatches(deployment: Deployment, names: Names) -> dict[str, str]:
    tenant, sub = names.tenant(), names.user()
    wide = (">", "$sys.>")
    return {
        "other-sub": deployment.mint(tenant, names.user(1), sid="tab-1", subscribe=wide),
        "other-tenant": deployment.mint(names.tenant(1), sub, sid="tab-1", subscribe=wide),
        "other-sid": deployment.mint(tenant, sub, sid="tab-2", subscribe=wide),
        "no-sid": deployment.mint(tenant, sub, subscribe=wide),
        "broadcaster": deployment.mint(tenant, sub, sid="tab-1", broadcaster=True, subscribe=wide),
    }


@pytest.mark.requirement("UNI-AUTH-17", "UNI-ERR-6", "UNI-ERR-8", "UNI-SESS-1")
@pytest.mark.parametrize(
    "kind", ["other-sub", "other-tenant", "other-sid", "no-sid", "broadcaster"]
)
def test_server_refuses_refresh_of_other_identity_with_token_mismatch(
    user: User, deployment: Deployment, names: Names, kind: str
) -> None:
    tenant, sub, channel = names.tenant(), names.user(), names.channel()
    conn = user(tenant, sub, sid="tab-1", subscribe=(f"{channel}.*",), ttl_s=1800)
    token = _mismatches(deployment, names)[kind]
    reply = _refresh(conn, token, "r-mm")
    assert reply["type"] == "error" and reply["code"] == "token_mismatch", reply
    assert reply.get("id") == "r-mm"
    _assert_no_token_in(reply, token)
    # The old token, its grants and its identity stay in force.
    assert conn.subscribe(f"{channel}.a")["type"] == "subscribed"
    wide = conn.request({"type": "subscribe", "id": "w", "channel": names.channel()})
    assert wide.get("code") == "forbidden", f"grants of the refused token applied: {wide}"
    good = deployment.mint(tenant, sub, sid="tab-1", ttl_s=7200)
    assert _refresh(conn, good, "r-after")["type"] == "refreshed"


@pytest.mark.requirement("UNI-AUTH-18", "UNI-ERR-6", "UNI-ERR-8")
@pytest.mark.parametrize("kind", ["forged", "alg-none", "expired", "foreign-secret"])
def test_server_refuses_refresh_with_unverifiable_token_with_token_invalid(
    user: User, deployment: Deployment, names: Names, kind: str
) -> None:
    tenant, sub, channel = names.tenant(), names.user(), names.channel()
    conn = user(tenant, sub, subscribe=(f"{channel}.*",), ttl_s=1800)
    wide = deployment.claims(tenant, sub, subscribe=(">",), publish=(">",))
    if kind == "forged":
        token = _forged(deployment.mint(tenant, sub, subscribe=(">",)))
    elif kind == "alg-none":
        token = f"{_b64json({'alg': 'none'})}.{_b64json(wide)}."
    elif kind == "foreign-secret":
        token = _foreign(deployment, names, wide)
    else:
        require_secret(deployment)
        wide["exp"] = int(time.time()) - 1
        token = deployment.sign(wide)
    reply = _refresh(conn, token, "r-bad")
    assert reply["type"] == "error" and reply["code"] == "token_invalid", reply
    assert reply.get("id") == "r-bad"
    _assert_no_token_in(reply, token)
    assert conn.subscribe(f"{channel}.a")["type"] == "subscribed"
    refused = conn.request({"type": "subscribe", "id": "w", "channel": names.channel()})
    assert refused.get("code") == "forbidden", f"grants of a refused token applied: {refused}"
    assert conn.welcome is not None
    assert conn.request({"type": "ping", "id": "alive"})["type"] == "pong"


@pytest.mark.requirement("UNI-AUTH-19", "UNI-AUTH-16")
def test_server_authorises_against_new_grants_only_after_refresh(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    old, new = names.channel("old"), names.channel("new")
    conn = user(tenant, sub, subscribe=(f"{old}.>",), publish=(f"{old}.>",))
    assert (
        conn.request({"type": "subscribe", "id": "n0", "channel": f"{new}.x"}).get("code")
        == "forbidden"
    )
    token = deployment.mint(tenant, sub, subscribe=(f"{new}.>",), publish=(f"{new}.>",))
    assert _refresh(conn, token)["type"] == "refreshed"
    assert conn.subscribe(f"{new}.x")["type"] == "subscribed"
    refused = conn.request({"type": "subscribe", "id": "o1", "channel": f"{old}.x"})
    assert refused.get("code") == "forbidden", refused
    assert conn.request(conn.publish_message(f"{new}.x"))["type"] == "ack"
    refused = conn.request(conn.publish_message(f"{old}.x"))
    assert refused.get("code") == "forbidden", refused


@pytest.mark.requirement("UNI-AUTH-20", "UNI-SUB-14", "UNI-TR-28")
def test_server_revokes_subscriptions_outside_new_grants_before_refreshed(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    kept, lost = names.channel("kept"), names.channel("lost")
    conn = user(tenant, sub, subscribe=(f"{kept}.>", f"{lost}.>"))
    publisher = user(tenant, names.user(1))
    cap = subscription_cap(conn, 2, "revoking one subscription and keeping another")
    # The most telling subscriptions first, as many as the announced cap allows.
    held = [f"{lost}.a", f"{kept}.a", "$me.inbox", f"{lost}.>", f"{kept}.*", "$me.>"][:cap]
    for pattern in held:
        conn.subscribe(pattern)
    token = deployment.mint(tenant, sub, subscribe=(f"{kept}.>",))
    conn.send({"type": "refresh", "id": "rv", "token": token})
    reply = conn.expect("refreshed", where=lambda f: f.get("id") == "rv")
    assert reply["type"] == "refreshed"
    position = next(i for i, f in enumerate(conn.frames) if f.get("id") == "rv")
    revoked = [f for f in conn.frames if f.get("type") == "unsubscribed"]
    lost_patterns = [p for p in held if p.startswith(lost)]
    assert sorted(f["channel"] for f in revoked) == sorted(lost_patterns), revoked
    for frame in revoked:
        assert frame["reason"] == "revoked" and "id" not in frame, frame
        assert conn.frames.index(frame) < position, "unsubscribed sent after refreshed"
    for pattern in [p for p in held if not p.startswith(lost)]:
        again = conn.request({"type": "subscribe", "id": "again", "channel": pattern})
        assert again.get("code") == "already_subscribed", f"{pattern} was removed: {again}"
    publisher.publish(f"{lost}.a")
    conn.assert_no_frame(
        "event",
        lambda: publisher.publish(f"{kept}.a"),
        where=lambda f: str(f.get("channel", "")).startswith(lost),
    )


@pytest.mark.requirement("UNI-AUTH-21", "UNI-AUTH-25", "UNI-TR-26")
@pytest.mark.timing
def test_server_does_not_apply_refresh_received_after_expiry(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    conn = user(tenant, sub, ttl_s=_short_ttl(deployment))
    assert conn.welcome is not None
    exp = conn.welcome["session"]["expires_at"]
    fresh = deployment.mint(tenant, sub, ttl_s=3600)
    remaining = exp - time.time()
    if conn.closed.wait(max(0.0, remaining) + 0.02) is False:
        with contextlib.suppress(Exception):  # the server may close at this very moment
            conn.send({"type": "refresh", "id": "late", "token": fresh})
    code, reason = conn.expect_close(timeout=_late(deployment, 1.0) + 1.0)
    assert code == 4101, f"closed with {code} {reason!r}, expected 4101 token_expired"
    assert not [f for f in conn.frames if f.get("type") == "refreshed"], "late refresh applied"
    replies = [f for f in conn.frames if f.get("id") == "late"]
    assert replies == [], f"a refresh received at or after exp must get no reply: {replies}"


@pytest.mark.requirement("UNI-AUTH-25", "UNI-CLOSE-9")
@pytest.mark.timing
def test_server_closes_4101_when_token_reaches_exp(
    user: User, deployment: Deployment, names: Names
) -> None:
    conn = user(names.tenant(), names.user(), ttl_s=_short_ttl(deployment))
    assert conn.welcome is not None
    exp = conn.welcome["session"]["expires_at"]
    code, reason = conn.expect_close(timeout=max(0.0, exp - time.time()) + _late(deployment, 1.0))
    closed_at = time.time()
    assert code == 4101 and reason.split(";")[0] == "token_expired", (code, reason)
    assert closed_at >= exp - deployment.timeout(0.1), f"closed {exp - closed_at:.3f} s before exp"


# -- 3.6 expiry warning ----------------------------------------------------------------------------


def _warnings(conn: Conn) -> list[Frame]:
    return [f for f in conn.frames if f.get("type") == "token_expiring"]


@pytest.mark.requirement("UNI-AUTH-23", "UNI-TR-28")
@pytest.mark.timing
def test_server_warns_immediately_once_per_token_already_inside_warning_period(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    ttl = server_info.refresh_warning_ms // 1000
    if ttl < 2:
        pytest.skip(
            f"{NOT_RUN_PREFIX} refresh_warning_ms below 2 s leaves no room for a token "
            f"that starts inside the warning period"
        )
    tenant, sub = names.tenant(), names.user()
    conn = user(tenant, sub, ttl_s=ttl)
    assert conn.welcome is not None
    first = conn.expect("token_expiring")
    assert first["expires_at"] == conn.welcome["session"]["expires_at"] and "id" not in first
    assert conn.request({"type": "ping", "id": "f1"})["type"] == "pong"
    assert len(_warnings(conn)) == 1, _warnings(conn)
    token = deployment.mint(tenant, sub, ttl_s=ttl)
    refreshed = _refresh(conn, token)
    assert refreshed["type"] == "refreshed"
    second = conn.expect("token_expiring")
    assert second["expires_at"] == refreshed["expires_at"], second
    order = [i for i, f in enumerate(conn.frames) if f is second or f is refreshed]
    assert conn.frames[order[0]] is refreshed, "the second warning came before refreshed"
    assert conn.request({"type": "ping", "id": "f2"})["type"] == "pong"
    assert len(_warnings(conn)) == 2, _warnings(conn)


@pytest.mark.requirement("UNI-AUTH-23")
@pytest.mark.timing
def test_server_warns_at_exp_minus_refresh_warning(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    warning_ms = server_info.refresh_warning_ms
    # The shortest lifetime whose warning is still at least 0.4 s away (exp is whole seconds).
    now = time.time()
    ttl = math.ceil(now + 0.4 + warning_ms / 1000) - math.floor(now)
    conn = user(names.tenant(), names.user(), ttl_s=ttl)
    assert conn.welcome is not None
    exp = conn.welcome["session"]["expires_at"]
    due = exp - warning_ms / 1000
    wait = max(0.0, due - time.time()) + _late(deployment, 1.0)
    warning = conn.expect("token_expiring", timeout=wait)
    arrived = time.time()
    assert warning["expires_at"] == exp, warning
    assert arrived >= due - deployment.timeout(0.1), f"warned {due - arrived:.3f} s early"
    assert conn.request({"type": "ping", "id": "after"})["type"] == "pong"
    assert len(_warnings(conn)) == 1, _warnings(conn)
