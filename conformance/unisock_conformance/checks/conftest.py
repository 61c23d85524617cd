"""Fixtures every check uses: the deployment, the server's announced parameters, unique
names, and connection factories whose connections are checked on arrival and closed after
the test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from types import EllipsisType

import pytest

from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.pytest_plugin import get_suite
from unisock_conformance.wire import PROTOCOL, Conn, ConnGroup, open_conn


class Connect:
    """``connect(token, *, subprotocols, origin, hello, url)`` -> an open :class:`Conn`.

    Without ``url``, successive connections go to the deployment's nodes in turn (the main
    URL, then each ``--node-url``), so that with several nodes every check also runs across
    them (UNI-DEL-34, UNI-SESS-14); ``url`` picks one node.
    """

    def __init__(self, deployment: Deployment, group: ConnGroup, names: Names) -> None:
        self.deployment = deployment
        self.group = group
        self.names = names
        self._count = itertools.count(1)
        self._nodes = itertools.cycle((deployment.url, *deployment.node_urls))

    def __call__(
        self,
        token: str | None = None,
        *,
        subprotocols: Sequence[str] | None = (PROTOCOL,),
        origin: str | EllipsisType | None = ...,
        hello: bool = True,
        name: str | None = None,
        url: str | None = None,
    ) -> Conn:
        if hello and token is None:
            raise ValueError("connect(hello=True) needs a token")
        conn = open_conn(
            url or next(self._nodes),
            name=name or f"conn{next(self._count)}",
            subprotocols=subprotocols,
            origin=self.deployment.origin if isinstance(origin, EllipsisType) else origin,
            headers=self.deployment.headers,
            timeout=self.deployment.timeout(),
            group=self.group,
            message_ids=self.names.message_id,
        )
        if hello:
            assert token is not None
            conn.hello(token)
        return conn


class User:
    """``user(tenant, sub, *, subscribe, publish, broadcaster, ttl_s, sid, url)`` -> hello'd
    Conn (``url``: another node of the deployment)."""

    def __init__(self, deployment: Deployment, connect: Connect) -> None:
        self.deployment = deployment
        self.connect = connect
        self._count = itertools.count(1)

    def __call__(
        self,
        tenant: str,
        sub: str,
        *,
        subscribe: Sequence[str] = (">",),
        publish: Sequence[str] = (">",),
        broadcaster: bool = False,
        ttl_s: int = 3600,
        sid: str | None = None,
        url: str | None = None,
    ) -> Conn:
        token = self.deployment.mint(
            tenant,
            sub,
            subscribe=subscribe,
            publish=publish,
            broadcaster=broadcaster,
            ttl_s=ttl_s,
            sid=sid,
        )
        return self.connect(token, name=f"{sub}#{next(self._count)}", url=url)


def subscription_cap(conn: Conn, needed: int = 1, what: str = "this check") -> int:
    """The announced ``max_subscriptions``; the check is not run below ``needed``."""
    assert conn.welcome is not None
    cap = int(conn.welcome["limits"]["max_subscriptions"])
    if cap < needed:
        pytest.skip(
            f"{NOT_RUN_PREFIX} {what} needs {needed} subscriptions on one connection; the "
            f"server announces max_subscriptions {cap}"
        )
    return cap


@pytest.fixture(scope="session")
def deployment(pytestconfig: pytest.Config) -> Deployment:
    suite = get_suite(pytestconfig)
    if suite is None:
        pytest.skip("not-run: the conformance checks need --unisock-url")
    return suite.deployment


@pytest.fixture(scope="session")
def server_info(pytestconfig: pytest.Config, deployment: Deployment) -> ServerInfo:
    suite = get_suite(pytestconfig)
    assert suite is not None
    return suite.server_info()


@pytest.fixture(scope="session")
def profile(deployment: Deployment) -> str:
    """``quick`` or ``full``; the hypothesis profile ``unisock-<profile>`` is loaded."""
    return deployment.profile


@pytest.fixture
def coalescing_channel(deployment: Deployment) -> str:
    """The channel the deployment declares coalescing; the check is not run without one."""
    if deployment.coalescing_channel is None:
        pytest.skip(f"{NOT_RUN_PREFIX} needs --coalescing-channel (a channel declared coalescing)")
    return deployment.coalescing_channel


@pytest.fixture
def names(request: pytest.FixtureRequest, deployment: Deployment) -> Names:
    return Names(deployment.seed, request.node.nodeid)


@pytest.fixture
def conn_group(request: pytest.FixtureRequest) -> Iterator[ConnGroup]:
    """The test's connections: closed at teardown; a late protocol violation fails the test."""
    group = ConnGroup(request.node.nodeid)
    yield group
    group.close_all()
    group.check_unreported()


@pytest.fixture
def connect(deployment: Deployment, conn_group: ConnGroup, names: Names) -> Connect:
    return Connect(deployment, conn_group, names)


@pytest.fixture
def user(deployment: Deployment, connect: Connect) -> User:
    return User(deployment, connect)
