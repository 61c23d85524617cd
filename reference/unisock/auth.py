"""Token verification and minting: JWT (RFC 7519) through PyJWT (spec section 3, UNI-AUTH).

Only configured algorithms are accepted and each algorithm only with its own kind of key, so
``none`` and algorithm/key confusion (an HS256 token "signed" with a public key) cannot pass.
Claim checks use the injected clock, never the wall clock, so expiry is testable. Error texts
never contain the token (UNI-SEC).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from unisock import jsonlimits
from unisock.channels import BROADCASTER, ChannelError, Pattern, parse_pattern
from unisock.errors import AuthFailed
from unisock.schemas import format_errors, validator_for

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_LEEWAY_S",
    "MIN_HS256_SECRET_BYTES",
    "AuthConfig",
    "Identity",
    "TokenVerifier",
    "load_public_key",
    "mint_token",
]

MAX_LEEWAY_S = 30
MIN_HS256_SECRET_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output."""
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_USER = "user"

# Signature only: every claim is checked below against the injected clock and the schema.
_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


def _key_fits(alg: str, key: object) -> bool:
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey)
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_public_key(alg: str, pem: bytes) -> Any:
    """Load a PEM public key for ``alg``; refuses a key of the wrong kind (UNI-AUTH)."""
    key = load_pem_public_key(pem)
    if not _key_fits(alg, key):
        raise ValueError(f"the key is not a {alg} public key")
    return key


def _check_secret(secret: str) -> None:
    if len(secret.encode("utf-8")) < MIN_HS256_SECRET_BYTES:
        raise ValueError(f"an HS256 secret needs at least {MIN_HS256_SECRET_BYTES} bytes")


@dataclass(frozen=True)
class AuthConfig:
    """Which algorithms and keys verify tokens, and which ``iss``/``aud`` are required."""

    hs256_secret: str | None = None
    public_keys: tuple[tuple[str, Any], ...] = ()
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 0

    def __post_init__(self) -> None:
        if self.hs256_secret is not None:
            _check_secret(self.hs256_secret)
        for alg, key in self.public_keys:
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"unsupported algorithm {alg!r}")
            if not _key_fits(alg, key):
                raise ValueError(f"the key configured for {alg} is not a {alg} public key")
        if self.hs256_secret is None and not self.public_keys:
            raise ValueError("configure an HS256 secret or at least one public key")
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"leeway_s must be within 0..{MAX_LEEWAY_S}")

    @classmethod
    def from_pem_files(
        cls,
        public_key_files: Iterable[tuple[str, str | Path]] = (),
        *,
        hs256_secret: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: int = 0,
    ) -> AuthConfig:
        """Build a configuration from ``(alg, path)`` pairs of PEM public keys."""
        keys = tuple(
            (alg, load_public_key(alg, Path(path).read_bytes())) for alg, path in public_key_files
        )
        return cls(hs256_secret, keys, issuer, audience, leeway_s)

    def algorithms(self) -> tuple[str, ...]:
        """The accepted ``alg`` values; ``none`` is never among them (UNI-AUTH)."""
        algs = ["HS256"] if self.hs256_secret is not None else []
        algs.extend(alg for alg, _ in self.public_keys if alg not in algs)
        return tuple(algs)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for; the tenant comes only from here (UNI-CH)."""

    tenant: str
    sub: str
    sid: str | None
    role: str
    subscribe_grants: tuple[Pattern, ...]
    publish_grants: tuple[Pattern, ...]
    expires_at: int
    """JWT ``exp``: seconds since the Unix epoch."""

    @property
    def is_broadcaster(self) -> bool:
        return self.role == BROADCASTER

    @property
    def expires_at_ms(self) -> int:
        return self.expires_at * 1000

    @property
    def subscribe_raw(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.subscribe_grants)

    @property
    def publish_raw(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.publish_grants)

    def same_principal(self, other: Identity) -> bool:
        """Refresh rule: same tenant, sub, sid (absent == absent) and role (UNI-AUTH)."""
        return (self.tenant, self.sub, self.sid, self.role) == (
            other.tenant,
            other.sub,
            other.sid,
            other.role,
        )


def _audience_ok(claim: object, wanted: str) -> bool:
    if isinstance(claim, str):
        return claim == wanted
    return isinstance(claim, list) and wanted in claim


def _grants(claims: Mapping[str, Any], kind: str) -> tuple[Pattern, ...]:
    raw = claims.get("grants", {}).get(kind, [])
    try:
        return tuple(parse_pattern(text) for text in raw)
    except ChannelError:  # pragma: no cover - the claims schema rejects these first
        raise AuthFailed(f"invalid {kind} grant") from None


class TokenVerifier:
    """Verifies tokens against an :class:`AuthConfig` (UNI-AUTH)."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        keys: dict[str, list[Any]] = {}
        if config.hs256_secret is not None:
            keys["HS256"] = [config.hs256_secret]
        for alg, key in config.public_keys:
            keys.setdefault(alg, []).append(key)
        self._keys = keys

    def _signed_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, RecursionError):
            raise AuthFailed("malformed token") from None
        alg = header.get("alg")
        # UNI-AUTH: `none`, unconfigured algorithms and alg/key confusion all end here: each
        # algorithm is tried only with the keys configured for it.
        if not isinstance(alg, str) or alg not in self._keys:
            raise AuthFailed("token algorithm not accepted")
        for key in self._keys[alg]:
            try:
                claims = jwt.decode(token, key, algorithms=[alg], options=_DECODE_OPTIONS)
            except jwt.InvalidSignatureError:
                continue
            except (jwt.PyJWTError, RecursionError):
                raise AuthFailed("token does not verify") from None
            if not isinstance(claims, dict):  # pragma: no cover - PyJWT returns dicts
                raise AuthFailed("token claims are not an object")
            try:
                # UNI-AUTH-26: claims obey the message limits, so a signed `sub` holding a lone
                # surrogate cannot reach `welcome`, an event's `publisher` or a log line.
                jsonlimits.check_value(claims)
            except jsonlimits.JsonLimitError:
                raise AuthFailed("token claims are outside the JSON limits") from None
            return claims
        raise AuthFailed("token signature does not verify")

    def verify(self, token: str, now: float) -> Identity:
        """Verify ``token`` at ``now`` (seconds since the Unix epoch); raise :class:`AuthFailed`.

        ``exp`` is enforced without leeway so that no event reaches an expired connection;
        the leeway only forgives an issuer clock that is ahead (``nbf``, ``iat``).
        """
        claims = self._signed_claims(token)
        if format_errors(validator_for("token-claims"), claims):
            raise AuthFailed("token claims do not match the schema")
        config = self.config
        if now >= claims["exp"]:
            raise AuthFailed("token expired")
        nbf = claims.get("nbf")
        if nbf is not None and nbf > now + config.leeway_s:
            raise AuthFailed("token not valid yet")  # UNI-AUTH-9
        iat = claims.get("iat")
        if iat is not None and iat > now + config.leeway_s:
            raise AuthFailed("token issued in the future")  # UNI-AUTH-10
        if config.issuer is not None and claims.get("iss") != config.issuer:
            raise AuthFailed("token issuer not accepted")
        if config.audience is not None and not _audience_ok(claims.get("aud"), config.audience):
            raise AuthFailed("token audience not accepted")
        return Identity(
            tenant=sys.intern(claims["tenant"]),  # one string per tenant, not per connection
            sub=claims["sub"],
            sid=claims.get("sid"),
            role=claims.get("role", _USER),
            subscribe_grants=_grants(claims, "subscribe"),
            publish_grants=_grants(claims, "publish"),
            expires_at=claims["exp"],
        )


def mint_token(
    secret: str,
    tenant: str,
    sub: str,
    subscribe: Iterable[str] = (),
    publish: Iterable[str] = (),
    broadcaster: bool = False,
    ttl_s: int = 3600,
    sid: str | None = None,
    now: float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 token for development and tests (the CLI's ``token`` command uses it)."""
    _check_secret(secret)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "tenant": tenant,
        "iat": issued,
        "exp": issued + ttl_s,
        "grants": {"subscribe": list(subscribe), "publish": list(publish)},
    }
    if sid is not None:
        claims["sid"] = sid
    if broadcaster:
        claims["role"] = BROADCASTER
    if extra_claims:
        claims.update(extra_claims)
    return jwt.encode(claims, secret, algorithm="HS256")
