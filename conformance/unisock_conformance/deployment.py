"""The deployment under test: its URL, how to mint tokens for it, and how slow it may be.

Checks never hard-code credentials or timings: they ask the :class:`Deployment` for tokens
(a shared HS256 secret or a user-supplied command) and scale every wait by ``time_scale`` so
the suite runs against slow deployments too.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:
    from unisock_conformance.signer import TokenCommand

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "NOT_APPLICABLE_PREFIX",
    "NOT_RUN_PREFIX",
    "PROFILES",
    "UNIMPLEMENTED_PREFIX",
    "Deployment",
    "Names",
    "ServerInfo",
    "default_time_scale",
    "hypothesis_profile",
    "not_applicable",
    "not_run",
    "require_secret",
    "unimplemented",
]

PROFILES: Final = ("quick", "full")
# Base wait for one expected frame, before scaling (``Deployment.timeout``).
DEFAULT_TIMEOUT_S: Final = 5.0
# Skip reasons starting with these prefixes are graded "unimplemented" / "not-run" /
# "not-applicable" (the requirement's condition does not hold for this deployment).
UNIMPLEMENTED_PREFIX: Final = "unimplemented:"
NOT_RUN_PREFIX: Final = "not-run:"
NOT_APPLICABLE_PREFIX: Final = "not-applicable:"


def default_time_scale() -> float:
    """``UNISOCK_TIME_SCALE`` from the environment, else 1.0."""
    text = os.environ.get("UNISOCK_TIME_SCALE", "").strip()
    if not text:
        return 1.0
    value = float(text)
    if value <= 0:
        raise ValueError("UNISOCK_TIME_SCALE must be a positive number")
    return value


def hypothesis_profile(profile: str) -> str:
    """The hypothesis settings profile name for a suite profile (``unisock-quick``, ...)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return f"unisock-{profile}"


@dataclass(frozen=True)
class Deployment:
    """Where the server is and how to obtain tokens it accepts."""

    url: str
    secret: str | None = field(default=None, repr=False)
    token_command: str | None = field(default=None, repr=False)
    broadcaster_token: str | None = field(default=None, repr=False)
    origin: str | None = None
    """An Origin the deployment's allowlist contains; test connections send it."""
    any_origin: bool = False
    """The deployment has no Origin allowlist: it accepts every Origin (UNI-SEC-1 binds none)."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    time_scale: float = 1.0
    seed: int = 0
    profile: str = "quick"
    drain_command: str | None = field(default=None, repr=False)
    """Shell command that makes the deployment drain (spec 9.5); drain checks need it."""
    reset_command: str | None = field(default=None, repr=False)
    """Shell command that makes the deployment lose its channel history and offsets."""
    node_urls: tuple[str, ...] = ()
    """Further nodes of the same deployment, sharing its broker (UNI-SESS-14, UNI-DEL-34).
    With them, the checks' connections are spread over every node."""
    outage_command: str | None = field(default=None, repr=False)
    """Shell command that makes the deployment's broker unreachable (spec 12.4)."""
    recover_command: str | None = field(default=None, repr=False)
    """Shell command that makes the broker reachable again after ``outage_command``."""
    coalescing_channel: str | None = None
    """A channel the deployment declares coalescing (the suite cannot discover one)."""
    example_event_types: bool = False
    """The deployment registers the example event types of ``schemas/v1/events``: a server
    acknowledging data their schemas refuse is then at fault, not merely unconfigured."""
    time_budget_s: float | None = None
    """Seconds one timing check may wait (``--time-budget``); None: the profile's budget."""
    issuer: str | None = None
    """The ``iss`` the deployment requires (UNI-AUTH-12); tokens the suite signs carry it."""
    audience: str | None = None
    """The ``aud`` the deployment requires (UNI-AUTH-13); tokens the suite signs carry it."""
    _signer: list[TokenCommand] = field(default_factory=list, init=False, repr=False, compare=False)
    """The running token command, once started (a frozen dataclass holds it in a list)."""
    _signer_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for url in (self.url, *self.node_urls):
            if not url.startswith(("ws://", "wss://")):
                raise ValueError(f"the server URL must start with ws:// or wss://, got {url!r}")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("the time budget must be positive")
        if self.any_origin and self.origin is not None:
            raise ValueError("--origin names an allowlist entry; --any-origin says there is none")

    def can_sign(self) -> bool:
        """True when the suite can obtain tokens for claims of its choosing: a shared secret
        or a token command (spec 14.6) signs whatever claims a check crafts."""
        return self.secret is not None or self.token_command is not None

    def can_mint(self) -> bool:
        """True when user tokens can be obtained at all (secret or token command)."""
        return self.can_sign()

    def run_drain_command(self) -> None:
        """Run ``drain_command`` through the shell; a failing command fails the check."""
        if self.drain_command is None:
            raise RuntimeError("draining the deployment needs --drain-command")
        self._run_operator_command("drain", self.drain_command)

    def run_reset_command(self) -> None:
        """Run ``reset_command`` through the shell; a failing command fails the check."""
        if self.reset_command is None:
            raise RuntimeError("resetting the deployment needs --reset-command")
        self._run_operator_command("reset", self.reset_command)

    def run_outage_command(self) -> None:
        """Run ``outage_command``: the broker becomes unreachable (a failing command fails)."""
        if self.outage_command is None:
            raise RuntimeError("an outage needs --outage-command")
        self._run_operator_command("outage", self.outage_command)

    def run_recover_command(self) -> None:
        """Run ``recover_command``: the broker becomes reachable again."""
        if self.recover_command is None:
            raise RuntimeError("recovering from an outage needs --recover-command")
        self._run_operator_command("recover", self.recover_command)

    def _run_operator_command(self, what: str, command: str) -> None:
        result = subprocess.run(
            command,
            shell=True,
            capture_output=True,
            text=True,
            timeout=self.timeout(30.0),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"the {what} command exited with status {result.returncode}")

    def timeout(self, seconds: float = DEFAULT_TIMEOUT_S) -> float:
        """``seconds`` scaled for this deployment; every wait in the suite goes through here."""
        return seconds * self.time_scale

    def claims(
        self,
        tenant: str,
        sub: str,
        *,
        subscribe: Sequence[str] = (),
        publish: Sequence[str] = (),
        broadcaster: bool = False,
        ttl_s: int = 3600,
        sid: str | None = None,
    ) -> dict[str, Any]:
        """The JWT claims (UNI-AUTH) a minted token carries; checks may alter them and ``sign``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "tenant": tenant,
            "iat": now,
            "exp": now + ttl_s,
            "grants": {"subscribe": list(subscribe), "publish": list(publish)},
        }
        if sid is not None:
            claims["sid"] = sid
        if broadcaster:
            claims["role"] = "broadcaster"
        if self.issuer is not None:
            claims["iss"] = self.issuer
        if self.audience is not None:
            claims["aud"] = self.audience
        return claims

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        algorithm: str = "HS256",
        key: str | bytes | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A token for exactly ``claims``, signed by the deployment's signer.

        The signer is the shared secret (HS256) or the token command. ``key`` (and an
        ``algorithm`` of its own) signs with the suite's own key instead: only for tokens the
        deployment's signer must never produce. A claim set the token command refuses ends
        the check as ``not-run``.
        """
        import jwt  # PyJWT; imported here so the CLI parser does not load cryptography

        if key is not None:
            return jwt.encode(dict(claims), key, algorithm=algorithm, headers=dict(headers or {}))
        if self.secret is not None:
            return jwt.encode(
                dict(claims), self.secret, algorithm=algorithm, headers=dict(headers or {})
            )
        if self.token_command is not None:
            from unisock_conformance.signer import TokenRefused

            try:
                return self.signer().sign(claims)
            except TokenRefused as refusal:
                not_run(f"the token command refused to sign these claims: {refusal}")
        raise RuntimeError("signing tokens needs --secret or --token-command")

    def signer(self) -> TokenCommand:
        """The running token command (started on first use, shared by every check)."""
        from unisock_conformance.signer import TokenCommand

        if self.token_command is None:
            raise RuntimeError("no token command was given (--token-command)")
        with self._signer_lock:
            if not self._signer:
                self._signer.append(TokenCommand(self.token_command, self.timeout(30.0)))
            return self._signer[0]

    def close(self) -> None:
        """End of run: stop the token command, if one was started."""
        with self._signer_lock:
            signers, self._signer[:] = list(self._signer), []
        for signer in signers:
            signer.close()

    def mint(
        self,
        tenant: str,
        sub: str,
        *,
        subscribe: Sequence[str] = (),
        publish: Sequence[str] = (),
        broadcaster: bool = False,
        ttl_s: int = 3600,
        sid: str | None = None,
    ) -> str:
        """A token the server accepts, from the secret or from the token command."""
        if self.can_sign():
            return self.sign(
                self.claims(
                    tenant,
                    sub,
                    subscribe=subscribe,
                    publish=publish,
                    broadcaster=broadcaster,
                    ttl_s=ttl_s,
                    sid=sid,
                )
            )
        if broadcaster and self.broadcaster_token is not None:
            return self.broadcaster_token
        raise RuntimeError("no way to mint tokens: give --secret or --token-command")

    def public(self) -> dict[str, Any]:
        """What may appear in reports: never the secret, tokens or header values."""
        return {
            "url": self.url,
            "token_source": "secret"
            if self.secret is not None
            else ("command" if self.token_command is not None else "none"),
            "broadcaster_token": self.broadcaster_token is not None,
            "origin": self.origin,
            "any_origin": self.any_origin,
            "header_names": [name for name, _ in self.headers],
            "time_scale": self.time_scale,
            "seed": self.seed,
            "profile": self.profile,
            "nodes": 1 + len(self.node_urls),
            "drain_command": self.drain_command is not None,
            "reset_command": self.reset_command is not None,
            "outage_command": self.outage_command is not None,
            "coalescing_channel": self.coalescing_channel,
            "example_event_types": self.example_event_types,
            "issuer": self.issuer is not None,
            "audience": self.audience is not None,
        }


@dataclass(frozen=True)
class ServerInfo:
    """The parameters a server announced in ``welcome`` (UNI-LC): checks adapt to them."""

    raw: dict[str, Any]

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self.raw.get("limits", {}))

    @property
    def heartbeat(self) -> dict[str, Any]:
        return dict(self.raw.get("heartbeat", {}))

    @property
    def backoff(self) -> dict[str, Any]:
        return dict(self.raw.get("backoff", {}))

    @property
    def history(self) -> dict[str, Any]:
        return dict(self.raw.get("history", {}))

    @property
    def dedup_window_ms(self) -> int:
        return int(self.raw.get("dedup_window_ms", 0))

    @property
    def refresh_warning_ms(self) -> int:
        return int(self.raw.get("refresh_warning_ms", 0))

    @property
    def features(self) -> frozenset[str]:
        return frozenset(str(item) for item in self.raw.get("features", ()))

    @property
    def spec_version(self) -> str | None:
        value = self.raw.get("spec_version")
        return value if isinstance(value, str) else None


# Idempotency keys must be fresh for every distinct event (UNI-PUB-34), also when a run is
# repeated with the same seed against a long-lived deployment: they carry a per-run salt.
_RUN_SALT: Final = secrets.token_hex(4)


@dataclass
class Names:
    """Identifiers unique to one test, derived from the run seed and the test id.

    Tests never share tenants, users or channels, so a long-lived deployment's state from
    other tests (or other runs with other seeds) cannot leak into a result. Message ids also
    differ between runs with the same seed.
    """

    seed: int
    scope: str
    salt: str = _RUN_SALT
    _counter: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    @property
    def hex(self) -> str:
        digest = hashlib.blake2b(f"{self.seed}\x00{self.scope}".encode(), digest_size=5)
        return digest.hexdigest()

    def _next(self) -> str:
        digest = hashlib.blake2b(
            f"{self.seed}\x00{self.scope}\x00{next(self._counter)}".encode(), digest_size=5
        )
        return digest.hexdigest()

    def tenant(self, i: int = 0) -> str:
        """A tenant name (grammar ``[a-z0-9][a-z0-9_-]{0,63}``) unique to this test."""
        return f"t{self.hex}-{i}"

    def user(self, i: int = 0) -> str:
        """A subject unique to this test."""
        return f"u{self.hex}-{i}"

    def channel(self, prefix: str = "c") -> str:
        """A fresh, valid channel segment (a new one on every call)."""
        return f"{prefix}{self._next()}"

    def message_id(self) -> str:
        """A fresh idempotency key (never repeated by a later run)."""
        return f"m{self.hex}-{self.salt}-{self._next()}"

    def request_id(self) -> str:
        """A fresh request ``id``."""
        return f"r{self._next()}"


def require_secret(deployment: Deployment) -> None:
    """Skip (graded ``not-run``) a check that must sign crafted claims without a signer."""
    import pytest

    if not deployment.can_sign():
        pytest.skip(f"{NOT_RUN_PREFIX} needs --secret or --token-command to sign crafted claims")


def unimplemented(reason: str) -> NoReturn:
    """End a check as ``unimplemented``: the server does not announce the feature it needs."""
    import pytest

    pytest.skip(f"{UNIMPLEMENTED_PREFIX} {reason}")


def not_run(reason: str) -> NoReturn:
    """End a check as ``not-run``: a precondition is missing; ``reason`` says how to meet it."""
    import pytest

    pytest.skip(f"{NOT_RUN_PREFIX} {reason}")


def not_applicable(reason: str) -> NoReturn:
    """End a check as ``not-applicable``: the requirement binds deployments configured
    otherwise (for example an issuer rule on a server without an issuer)."""
    import pytest

    pytest.skip(f"{NOT_APPLICABLE_PREFIX} {reason}")
