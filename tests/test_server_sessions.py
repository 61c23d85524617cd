"""Sessions, supersede and per-user caps over real sockets (spec section 10, UNI-SESS)."""

from __future__ import annotations

import time

from server_harness import asynctest, running_server, token


@asynctest
async def test_server_supersedes_older_connection_of_the_same_session_with_4001() -> None:
    """UNI-SESS-6, UNI-SESS-9: same (tenant, sub, sid) -> the older one closes with 4001."""
    async with running_server() as h:
        old = await h.connect(token(sid="tab-1"))
        await old.subscribe("tasks.1")
        new = await h.connect(token(sid="tab-1"))
        closed = await old.expect_close()
        assert (closed.code, closed.reason) == (4001, "superseded")
        await new.subscribe("tasks.1")
        await new.publish("tasks.1", "kept")
        [event] = await new.events(1)
        assert event["data"] == "kept"


@asynctest
async def test_server_never_supersedes_by_session_without_sid() -> None:
    """UNI-SESS-7: connections whose tokens lack sid (either one) are separate sessions."""
    async with running_server() as h:
        a = await h.connect(token())
        b = await h.connect(token(sid="tab-1"))
        c = await h.connect(token())
        for conn in (a, b, c):
            assert await conn.fence() == []


@asynctest
async def test_server_closes_oldest_connections_beyond_the_per_user_cap() -> None:
    """UNI-SESS-11, UNI-SESS-12: cap 2; the third connection closes the first, never itself."""
    async with running_server(max_connections_per_user=2) as h:
        a = await h.connect(token())
        b = await h.connect(token())
        c = await h.connect(token())
        closed = await a.expect_close()
        assert (closed.code, closed.reason) == (4001, "superseded")
        assert await b.fence() == []
        assert await c.fence() == []


@asynctest
async def test_server_applies_session_rule_before_the_cap() -> None:
    """UNI-SESS-13: with cap 2, A, B(sid) and C(same sid): only B closes, A stays."""
    async with running_server(max_connections_per_user=2) as h:
        a = await h.connect(token())
        b = await h.connect(token(sid="s1"))
        c = await h.connect(token(sid="s1"))
        closed = await b.expect_close()
        assert closed.code == 4001
        assert await a.fence() == []
        assert await c.fence() == []


@asynctest
async def test_server_never_supersedes_or_counts_broadcasters() -> None:
    """UNI-SESS-15: broadcasters with one identity and sid all stay, and do not count."""
    async with running_server(max_connections_per_user=1) as h:
        svcs = [await h.connect(token(sub="svc", sid="s", broadcaster=True)) for _ in range(3)]
        user = await h.connect(token(sub="svc", sid="s"))
        for conn in (*svcs, user):
            assert await conn.fence() == []


@asynctest
async def test_server_keeps_sessions_of_different_tenants_apart() -> None:
    """UNI-SESS-2: equal sub and sid in another tenant neither supersede nor count."""
    async with running_server(max_connections_per_user=1) as h:
        acme = await h.connect(token("acme", "alice", sid="tab-1"))
        globex = await h.connect(token("globex", "alice", sid="tab-1"))
        assert await acme.fence() == []
        assert await globex.fence() == []


@asynctest
async def test_server_refused_hello_supersedes_nothing() -> None:
    """UNI-SESS-8: a hello closed with 4100 or 4000 does not touch the open session."""
    async with running_server(max_connections_per_user=1) as h:
        alice = await h.connect(token(sid="tab-1"))
        expired = await h.open()
        await expired.send(
            {"type": "hello", "token": token(sid="tab-1", now=time.time() - 7200, ttl_s=60)}
        )
        assert (await expired.expect_close()).code == 4100
        garbled = await h.open()
        await garbled.send({"type": "hello", "token": token(sid="tab-1"), "client": "x"})
        assert (await garbled.expect_close()).code == 4000
        assert await alice.fence() == []


@asynctest
async def test_server_multiplexes_tenant_private_and_system_subscriptions() -> None:
    """UNI-SESS-3: one connection carries tenant, $me and $sys subscriptions together."""
    async with running_server() as h:
        alice = await h.connect(token(subscribe=("tasks.>", "$sys.>"), publish=("tasks.>",)))
        await alice.subscribe("tasks.>", filter={"exists": "prio"})
        await alice.subscribe("$me.>")
        await alice.subscribe("$sys.announcements")
        svc = await h.connect(token(sub="svc", publish=("$sys.>", "$me.>"), broadcaster=True))
        await svc.publish("$sys.announcements", "sys")
        await svc.publish("$me.notifications", "private", user="alice")
        await alice.publish("tasks.1", "tenant", attrs={"prio": 1})
        events = await alice.events(3)
        assert sorted((e["channel"], e["data"]) for e in events) == [
            ("$me.notifications", "private"),
            ("$sys.announcements", "sys"),
            ("tasks.1", "tenant"),
        ]
