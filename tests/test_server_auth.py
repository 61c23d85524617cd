"""Tokens over real sockets: verification, refresh, expiry warning and expiry (UNI-AUTH)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jwt
import pytest

from server_harness import (
    OTHER_SECRET,
    SECRET,
    asynctest,
    b64url,
    running_server,
    shifted_clock,
    token,
)
from unisock.auth import AuthConfig


def _unsigned(alg: str) -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = {"sub": "alice", "tenant": "acme", "exp": int(time.time()) + 3600}
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def _tampered() -> str:
    header, _, signature = token().split(".")
    claims = {"sub": "alice", "tenant": "globex", "exp": int(time.time()) + 3600}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def _claims(**claims: object) -> str:
    base: dict[str, object] = {"sub": "alice", "tenant": "acme", "exp": int(time.time()) + 3600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


REJECTED: dict[str, Callable[[], str]] = {
    "expired": lambda: token(now=time.time() - 7200, ttl_s=3600),
    "exp_now": lambda: _claims(exp=int(time.time())),
    "forged_signature": lambda: token(secret=OTHER_SECRET),
    "tampered_payload": _tampered,
    "alg_none": lambda: _unsigned("none"),
    "alg_NONE": lambda: _unsigned("NONE"),
    "alg_None": lambda: _unsigned("None"),
    "alg_not_configured": lambda: jwt.encode(
        {"sub": "alice", "tenant": "acme", "exp": int(time.time()) + 60},
        SECRET + "-long-enough-for-hs512-0123456789abcdef",
        algorithm="HS512",
    ),
    "missing_exp": lambda: _claims(exp=None),
    "missing_tenant": lambda: _claims(tenant=None),
    "tenant_outside_grammar": lambda: _claims(tenant="ACME"),
    "grant_not_a_pattern": lambda: _claims(grants={"subscribe": ["Tasks.*"]}),
    "nbf_in_future": lambda: _claims(nbf=int(time.time()) + 600),
    "iat_in_future": lambda: _claims(iat=int(time.time()) + 600),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_server_closes_with_4100_on_rejected_token(case: str) -> None:
    """UNI-LC-7, UNI-AUTH-3..10, UNI-SEC-18: every rejection is the same 4100 auth_failed."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.open()
            await client.send({"type": "hello", "token": REJECTED[case]()})
            closed = await client.expect_close()
            assert (closed.code, closed.reason) == (4100, "auth_failed")
            assert closed.frames == []

    run()


@asynctest
async def test_server_checks_configured_issuer_and_audience() -> None:
    """UNI-AUTH-12, UNI-AUTH-13: iss and aud are enforced when configured."""
    auth = AuthConfig(hs256_secret=SECRET, issuer="https://id.example", audience="unisock")
    async with running_server(auth=auth) as h:
        good = _claims(iss="https://id.example", aud=["other", "unisock"])
        await h.connect(good)
        for bad in (
            _claims(aud="unisock"),
            _claims(iss="https://id.example.evil", aud="unisock"),
            _claims(iss="https://id.example", aud="other"),
        ):
            client = await h.open()
            await client.send({"type": "hello", "token": bad})
            closed = await client.expect_close()
            assert (closed.code, closed.reason) == (4100, "auth_failed")


@asynctest
async def test_server_ignores_credentials_in_the_handshake_url() -> None:
    """UNI-AUTH-2: a valid token in the query string authenticates nothing."""
    async with running_server() as h:
        client = await h.open(path=f"/?token={token()}&access_token={token()}")
        await client.send({"type": "hello", "token": token(secret=OTHER_SECRET)})
        closed = await client.expect_close()
        assert (closed.code, closed.reason) == (4100, "auth_failed")


@asynctest
async def test_server_accepts_unknown_claims_and_defaults_absent_grants_and_role() -> None:
    """UNI-AUTH-14, UNI-AUTH-15: extra claims are ignored; no grants means none; role user."""
    async with running_server() as h:
        tok = _claims(department="ops", feature_flags=["x"], sid="s1")
        client = await h.open()
        welcome = await client.hello(tok)
        assert welcome["session"]["role"] == "user"
        await client.error({"type": "subscribe", "channel": "tasks.1"}, "forbidden")
        await client.error(
            {"type": "publish", "channel": "tasks.1", "event": "a", "data": 1, "message_id": "m"},
            "forbidden",
        )
        await client.subscribe("$me.inbox")  # UNI-CH-11: own private channels need no grant


@asynctest
async def test_server_refresh_puts_new_token_and_grants_in_force() -> None:
    """UNI-AUTH-16, UNI-AUTH-19: refreshed carries the new exp; the new grants apply."""
    async with running_server() as h:
        client = await h.connect(token(subscribe=("tasks.>",), publish=("tasks.>",)))
        now = int(time.time())
        new = token(subscribe=("tasks.>", "docs.>"), publish=("docs.>",), now=now, ttl_s=7200)
        reply = await client.request({"type": "refresh", "token": new})
        assert reply["type"] == "refreshed"
        assert reply["expires_at"] == now + 7200
        await client.subscribe("docs.1")
        await client.error(
            {"type": "publish", "channel": "tasks.1", "event": "a", "data": 1, "message_id": "m"},
            "forbidden",
        )
        await client.publish("docs.1", "allowed now")
        [event] = await client.events(1)
        assert event["channel"] == "docs.1"


@asynctest
async def test_server_refresh_revokes_subscriptions_outside_new_grants() -> None:
    """UNI-AUTH-20, UNI-TR-28, UNI-LIM-5: revoked unsubscribed (no id) precedes refreshed."""
    async with running_server(max_subscriptions=3) as h:
        alice = await h.connect(token(subscribe=("tasks.>", "projects.*.status")))
        await alice.subscribe("projects.apollo.status")
        await alice.subscribe("tasks.1")
        await alice.subscribe("$me.inbox")
        await alice.send({"type": "refresh", "id": "r1", "token": token(subscribe=("tasks.>",))})
        revoked = await alice.expect_next(
            "unsubscribed", channel="projects.apollo.status", reason="revoked"
        )
        assert "id" not in revoked
        await alice.expect_next("refreshed", id="r1")
        publisher = await h.connect(token(sub="bob", publish=(">",)))
        await publisher.publish("projects.apollo.status", "revoked channel")
        await publisher.publish("tasks.1", "fence")
        [event] = await alice.events(1)
        assert event["data"] == "fence"
        await alice.subscribe("tasks.2")  # the revoked slot is free again


@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "globex"},
        {"sub": "bob"},
        {"sid": "tab-2"},
        {"sid": None},
        {"broadcaster": True},
    ],
)
def test_server_refuses_refresh_for_another_identity_with_token_mismatch(
    other: dict[str, object],
) -> None:
    """UNI-AUTH-17: another tenant, sub, sid or role -> token_mismatch; old token stays."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect(token(sid="tab-1"))
            await alice.subscribe("tasks.1")
            claims: dict[str, object] = {"tenant": "acme", "sub": "alice", "sid": "tab-1"}
            claims.update(other)
            new = token(
                str(claims["tenant"]),
                str(claims["sub"]),
                sid=claims["sid"],  # type: ignore[arg-type]
                broadcaster=bool(claims.get("broadcaster")),
                subscribe=(">",),
                publish=(">",),
            )
            await alice.error({"type": "refresh", "token": new}, "token_mismatch")
            await alice.error({"type": "subscribe", "channel": "docs.1"}, "forbidden")
            await alice.publish("tasks.1", "old grants hold")
            [event] = await alice.events(1)
            assert event["data"] == "old grants hold"

    run()


@pytest.mark.parametrize("case", ["forged_signature", "expired", "alg_none"])
def test_server_refuses_refresh_with_unverifiable_token_with_token_invalid(case: str) -> None:
    """UNI-AUTH-18, UNI-ERR-8: token_invalid, the old token stays, the error holds no token."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect()
            bad = REJECTED[case]()
            error = await alice.error({"type": "refresh", "token": bad}, "token_invalid")
            assert bad.split(".")[0] not in error.raw
            await alice.subscribe("tasks.1")

    run()


@asynctest
async def test_server_refuses_refresh_with_malformed_token_as_invalid_message() -> None:
    """Section 3.3 step 1: a refresh token not in JWS compact form is an invalid message."""
    async with running_server() as h:
        alice = await h.connect()
        await alice.error({"type": "refresh", "token": "not-a-token"}, "invalid_message")


@asynctest
async def test_server_warns_before_expiry_then_closes_with_4101() -> None:
    """UNI-AUTH-23, UNI-AUTH-25: token_expiring once at exp - warning, then 4101 at exp."""
    now = int(time.time())
    exp = now + 1000
    clock = shifted_clock(exp * 1000 - 600)
    async with running_server(clock=clock, refresh_warning_ms=300) as h:
        alice = await h.connect(token(now=now, ttl_s=1000))
        await alice.subscribe("tasks.1")
        warning = await alice.expect_next("token_expiring", expires_at=exp)
        assert "id" not in warning
        assert clock() >= exp * 1000 - 300
        closed = await alice.expect_close()
        assert (closed.code, closed.reason) == (4101, "token_expired")
        assert clock() >= exp * 1000
        assert [f["type"] for f in closed.frames] == []


@asynctest
async def test_server_warns_at_once_when_hello_token_is_inside_the_warning_period() -> None:
    """UNI-AUTH-23: a token already inside the warning period is warned right after welcome."""
    now = int(time.time())
    async with running_server(refresh_warning_ms=3_600_000) as h:
        alice = await h.open()
        await alice.hello(token(now=now, ttl_s=600))
        await alice.expect_next("token_expiring", expires_at=now + 600)
        assert await alice.fence() == []


@asynctest
async def test_server_refresh_extends_the_session_past_the_old_expiry() -> None:
    """UNI-AUTH-16, UNI-AUTH-23, UNI-AUTH-25: after refresh the new exp and its warning govern."""
    now = int(time.time())
    exp = now + 1000
    clock = shifted_clock(exp * 1000 - 600)
    async with running_server(clock=clock, refresh_warning_ms=300) as h:
        alice = await h.connect(token(now=now, ttl_s=1000))
        await alice.expect_next("token_expiring", expires_at=exp)
        reply = await alice.request({"type": "refresh", "token": token(now=now + 1, ttl_s=1000)})
        assert (reply["type"], reply["expires_at"]) == ("refreshed", exp + 1)
        # The new token's warning comes 700 ms after the old exp: the connection outlived it.
        await alice.expect_next("token_expiring", expires_at=exp + 1)
        assert clock() >= exp * 1000
        closed = await alice.expect_close()
        assert (closed.code, closed.reason) == (4101, "token_expired")
        assert clock() >= (exp + 1) * 1000
