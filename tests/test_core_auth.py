"""Token verification: algorithms, keys, claims and the injected clock (UNI-AUTH, UNI-SEC)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from unisock.auth import AuthConfig, Identity, TokenVerifier, load_public_key, mint_token
from unisock.errors import AuthFailed, CloseError

SECRET = "0123456789abcdef0123456789abcdef"
NOW = 1_764_120_000


def _claims(**extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "alice",
        "tenant": "acme",
        "exp": NOW + 600,
        "grants": {"subscribe": ["tasks.>"], "publish": ["tasks.*"]},
    }
    claims.update(extra)
    return claims


def _hs(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _verifier(**kwargs: Any) -> TokenVerifier:
    kwargs.setdefault("hs256_secret", SECRET)
    return TokenVerifier(AuthConfig(**kwargs))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{_b64(signature)}"


def _pem(private: Any) -> bytes:
    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def test_server_accepts_valid_hs256_token_and_builds_identity() -> None:
    identity = _verifier().verify(_hs(_claims(sid="tab-1")), NOW)
    assert isinstance(identity, Identity)
    assert (identity.tenant, identity.sub, identity.sid, identity.role) == (
        "acme",
        "alice",
        "tab-1",
        "user",
    )
    assert identity.subscribe_raw == ("tasks.>",)
    assert identity.publish_raw == ("tasks.*",)
    assert identity.subscribe_grants[0].tail
    assert identity.expires_at == NOW + 600
    assert identity.expires_at_ms == (NOW + 600) * 1000
    assert not identity.is_broadcaster


def test_grants_default_to_empty_and_role_to_user() -> None:
    claims = _claims()
    del claims["grants"]
    identity = _verifier().verify(_hs(claims), NOW)
    assert identity.subscribe_grants == ()
    assert identity.publish_grants == ()
    assert identity.sid is None
    assert identity.role == "user"


def test_broadcaster_role_is_taken_from_the_token() -> None:
    identity = _verifier().verify(_hs(_claims(role="broadcaster")), NOW)
    assert identity.is_broadcaster


def test_server_rejects_alg_none() -> None:
    token = _raw_token({"alg": "none", "typ": "JWT"}, _claims(), None)
    with pytest.raises(AuthFailed, match="algorithm"):
        _verifier().verify(token, NOW)


def test_server_rejects_unconfigured_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    with pytest.raises(AuthFailed, match="algorithm"):
        _verifier().verify(token, NOW)


def test_server_rejects_hs256_token_signed_with_the_public_key(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """Algorithm confusion: the public key PEM used as an HMAC secret never verifies."""
    pem = _pem(rsa_key)
    token = _raw_token({"alg": "HS256", "typ": "JWT"}, _claims(), pem)
    verifier = TokenVerifier(AuthConfig(public_keys=(("RS256", load_public_key("RS256", pem)),)))
    with pytest.raises(AuthFailed, match="algorithm"):
        verifier.verify(token, NOW)


def test_server_rejects_non_string_alg() -> None:
    token = _raw_token({"alg": 5}, _claims(), SECRET.encode())
    with pytest.raises(AuthFailed):
        _verifier().verify(token, NOW)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 50])
def test_server_rejects_malformed_token(token: str) -> None:
    with pytest.raises(AuthFailed):
        _verifier().verify(token, NOW)


def test_server_rejects_forged_signature() -> None:
    token = _hs(_claims(), secret="f" * 32)
    with pytest.raises(AuthFailed, match="signature"):
        _verifier().verify(token, NOW)


def test_server_rejects_token_with_tampered_payload() -> None:
    header, _, signature = _hs(_claims()).split(".")
    payload = _b64(json.dumps(_claims(tenant="evil")).encode())
    with pytest.raises(AuthFailed):
        _verifier().verify(f"{header}.{payload}.{signature}", NOW)


def test_server_rejects_signed_token_whose_payload_is_not_json() -> None:
    header = _b64(json.dumps({"alg": "HS256"}).encode())
    signing_input = f"{header}.{_b64(b'not json')}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(AuthFailed, match="does not verify"):
        _verifier().verify(f"{signing_input}.{_b64(signature)}", NOW)


@pytest.mark.parametrize(
    ("alg", "fixture"), [("RS256", "rsa_key"), ("ES256", "ec_key"), ("EdDSA", "ed_key")]
)
def test_server_accepts_asymmetric_algorithms(
    alg: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    private = request.getfixturevalue(fixture)
    verifier = TokenVerifier(AuthConfig(public_keys=((alg, load_public_key(alg, _pem(private))),)))
    identity = verifier.verify(jwt.encode(_claims(), private, algorithm=alg), NOW)
    assert identity.sub == "alice"


def test_server_tries_every_key_configured_for_an_algorithm(ec_key: Any) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    keys = (
        ("ES256", load_public_key("ES256", _pem(other))),
        ("ES256", load_public_key("ES256", _pem(ec_key))),
    )
    verifier = TokenVerifier(AuthConfig(public_keys=keys))
    assert verifier.verify(jwt.encode(_claims(), ec_key, algorithm="ES256"), NOW).sub == "alice"
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthFailed, match="signature"):
        verifier.verify(jwt.encode(_claims(), stranger, algorithm="ES256"), NOW)


def test_server_keys_hs256_with_the_utf8_octets_of_the_secret_unchanged() -> None:
    """UNI-AUTH-27: a base64- or hex-looking secret is still used as text."""
    secret = "c2VjcmV0LW9mLXRoaXJ0eS10d28tb2N0ZXRzLWxvbmc= "  # base64, with a trailing space
    verifier = _verifier(hs256_secret=secret)
    header = {"alg": "HS256", "typ": "JWT"}
    assert verifier.verify(_raw_token(header, _claims(), secret.encode("utf-8")), NOW)
    for wrong in (
        base64.b64decode(secret),
        secret.strip().encode("utf-8"),
        hashlib.sha256(secret.encode("utf-8")).digest(),
    ):
        with pytest.raises(AuthFailed):
            verifier.verify(_raw_token(header, _claims(), wrong), NOW)


@pytest.mark.parametrize(
    "header",
    [{"alg": "HS256"}, {"alg": "HS256", "typ": "at+jwt"}, {"alg": "HS256", "kid": "unknown"}],
)
def test_server_accepts_a_verified_token_whatever_its_typ_and_kid(header: dict[str, Any]) -> None:
    """UNI-AUTH-29: only the signature under a held key of ``alg`` decides."""
    token = _raw_token(header, _claims(), SECRET.encode("utf-8"))
    assert _verifier().verify(token, NOW).sub == "alice"


def test_server_rejects_expired_token_using_the_injected_clock() -> None:
    token = _hs(_claims())
    verifier = _verifier(leeway_s=30)
    assert verifier.verify(token, NOW + 599.9).sub == "alice"
    with pytest.raises(AuthFailed, match="expired"):
        verifier.verify(token, NOW + 600)


def test_server_rejects_token_not_yet_valid_beyond_leeway() -> None:
    token = _hs(_claims(nbf=NOW + 20))
    assert _verifier(leeway_s=30).verify(token, NOW).sub == "alice"
    with pytest.raises(AuthFailed, match="not valid yet"):
        _verifier(leeway_s=10).verify(token, NOW)


def test_server_checks_issuer_when_configured() -> None:
    verifier = _verifier(issuer="https://idp.example")
    assert verifier.verify(_hs(_claims(iss="https://idp.example")), NOW).sub == "alice"
    with pytest.raises(AuthFailed, match="issuer"):
        verifier.verify(_hs(_claims(iss="https://other.example")), NOW)
    with pytest.raises(AuthFailed, match="issuer"):
        verifier.verify(_hs(_claims()), NOW)


def test_server_checks_audience_when_configured() -> None:
    verifier = _verifier(audience="unisock")
    assert verifier.verify(_hs(_claims(aud="unisock")), NOW).sub == "alice"
    assert verifier.verify(_hs(_claims(aud=["x", "unisock"])), NOW).sub == "alice"
    for claims in (_claims(aud="other"), _claims(aud=["other"]), _claims()):
        with pytest.raises(AuthFailed, match="audience"):
            verifier.verify(_hs(claims), NOW)


def test_server_ignores_iss_and_aud_when_not_configured() -> None:
    assert _verifier().verify(_hs(_claims(iss="x", aud="y")), NOW).sub == "alice"


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": None},
        {"sub": None},
        {"exp": None},
        {"tenant": "ACME"},
        {"tenant": "a.b"},
        {"sub": ""},
        {"sub": "bad\u0000sub"},
        {"exp": "soon"},
        {"role": "admin"},
        {"grants": {"subscribe": ["Tasks"]}},
        {"grants": {"publish": "tasks"}},
    ],
)
def test_server_rejects_invalid_claims(change: dict[str, Any]) -> None:
    claims = _claims()
    for key, value in change.items():
        if value is None:
            del claims[key]
        else:
            claims[key] = value
    with pytest.raises(AuthFailed, match="claims"):
        _verifier().verify(_hs(claims), NOW)


def test_server_rejects_grant_with_too_many_segments() -> None:
    long_pattern = ".".join(["a"] * 17)
    with pytest.raises(AuthFailed):
        _verifier().verify(_hs(_claims(grants={"subscribe": [long_pattern]})), NOW)


def test_auth_failures_never_quote_the_token() -> None:
    tokens = [
        _hs(_claims(), secret="f" * 32),
        _hs(_claims(exp=NOW - 1)),
        _hs(_claims(tenant="ACME")),
        _raw_token({"alg": "none"}, _claims(), None),
    ]
    for token in tokens:
        with pytest.raises(AuthFailed) as info:
            _verifier().verify(token, NOW)
        assert token not in str(info.value)
        assert token.split(".")[1] not in info.value.close_reason()
        assert isinstance(info.value, CloseError)
        assert info.value.close_code == 4100


def test_auth_config_refuses_short_hs256_secret() -> None:
    """UNI-AUTH-28: 31 octets are refused, 32 (counted in UTF-8) accepted."""
    with pytest.raises(ValueError, match="32 bytes"):
        AuthConfig(hs256_secret="short")
    with pytest.raises(ValueError, match="32 bytes"):
        AuthConfig(hs256_secret="x" * 31)
    AuthConfig(hs256_secret="\u00e9" * 16)  # 16 characters, 32 octets


def test_auth_config_refuses_empty_configuration() -> None:
    with pytest.raises(ValueError, match="configure"):
        AuthConfig()


@pytest.mark.parametrize("leeway", [-1, 31])
def test_auth_config_caps_leeway_at_30_seconds(leeway: int) -> None:
    with pytest.raises(ValueError, match="leeway"):
        AuthConfig(hs256_secret=SECRET, leeway_s=leeway)


def test_auth_config_refuses_key_of_the_wrong_kind(rsa_key: Any, ec_key: Any) -> None:
    with pytest.raises(ValueError, match="ES256"):
        AuthConfig(public_keys=(("ES256", rsa_key.public_key()),))
    with pytest.raises(ValueError, match="unsupported"):
        AuthConfig(public_keys=(("HS512", ec_key.public_key()),))
    with pytest.raises(ValueError, match="RS256"):
        load_public_key("RS256", _pem(ec_key))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="ES256"):
        load_public_key("ES256", _pem(p384))
    with pytest.raises(ValueError, match="EdDSA"):
        load_public_key("EdDSA", _pem(rsa_key))
    with pytest.raises(ValueError, match="HS512"):
        load_public_key("HS512", _pem(rsa_key))


def test_auth_config_loads_pem_files(tmp_path: Path, rsa_key: Any, ed_key: Any) -> None:
    (tmp_path / "rsa.pem").write_bytes(_pem(rsa_key))
    (tmp_path / "ed.pem").write_bytes(_pem(ed_key))
    config = AuthConfig.from_pem_files(
        [("RS256", tmp_path / "rsa.pem"), ("EdDSA", str(tmp_path / "ed.pem"))],
        hs256_secret=SECRET,
        leeway_s=5,
    )
    assert config.algorithms() == ("HS256", "RS256", "EdDSA")
    verifier = TokenVerifier(config)
    assert verifier.verify(jwt.encode(_claims(), ed_key, algorithm="EdDSA"), NOW).sub == "alice"


def test_algorithms_never_include_none(rsa_key: Any) -> None:
    config = AuthConfig(public_keys=(("RS256", rsa_key.public_key()),) * 2)
    assert config.algorithms() == ("RS256",)
    assert "none" not in _verifier().config.algorithms()


def test_mint_token_produces_a_verifiable_token_with_requested_claims() -> None:
    token = mint_token(
        SECRET,
        "acme",
        "bob",
        subscribe=["$sys.>"],
        publish=["$sys.maint"],
        broadcaster=True,
        ttl_s=60,
        sid="s1",
        now=NOW,
        extra_claims={"iss": "dev"},
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["iat"] == NOW
    assert claims["exp"] == NOW + 60
    assert claims["iss"] == "dev"
    identity = _verifier(issuer="dev").verify(token, NOW)
    assert (identity.sub, identity.sid, identity.role) == ("bob", "s1", "broadcaster")
    assert identity.publish_raw == ("$sys.maint",)


def test_mint_token_defaults_to_now_and_user_role() -> None:
    token = mint_token(SECRET, "acme", "bob")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert "role" not in claims
    assert "sid" not in claims
    assert claims["exp"] - claims["iat"] == 3600


def test_mint_token_refuses_short_secret() -> None:
    with pytest.raises(ValueError):
        mint_token("short", "acme", "bob")


def test_same_principal_compares_tenant_sub_sid_and_role() -> None:
    verifier = _verifier()
    base = verifier.verify(_hs(_claims(sid="a")), NOW)
    assert base.same_principal(verifier.verify(_hs(_claims(sid="a", exp=NOW + 900)), NOW))
    for change in ({"sid": "b"}, {"sub": "bob", "sid": "a"}, {"role": "broadcaster", "sid": "a"}):
        other = verifier.verify(_hs(_claims(**change)), NOW)
        assert not base.same_principal(other)
    assert not base.same_principal(verifier.verify(_hs(_claims()), NOW))
