"""Application routes on the server's port: served first, WebSocket upgrades untouched."""

from __future__ import annotations

from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from server_harness import ServerHarness, asynctest, http_exchange, http_get, settings
from unisock.server import UnisockServer


def _routes(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/app/hello":
        return connection.respond(HTTPStatus.OK, "hello from the application\n")
    return None


@asynctest
async def test_server_serves_application_routes_and_still_accepts_clients() -> None:
    server = UnisockServer(settings(), http=_routes)
    host, port = await server.start("127.0.0.1", 0)
    harness = ServerHarness(server, host, port)
    try:
        assert await http_get(host, port, "/app/hello") == (200, "hello from the application\n")
        status, _ = await http_get(host, port, "/healthz")
        assert status == 200
        client = await harness.connect()
        await client.send({"type": "ping", "id": "k1"})
        await client.expect_next("pong", id="k1")
    finally:
        for client in harness.clients:
            await client.close()
        await server.close()


@asynctest
async def test_health_and_metrics_answer_with_a_query_string_and_the_prometheus_type() -> None:
    """Probes and scrapers often add a query (``?verbose``, a cache buster); the path alone
    decides, and the metrics carry the content type of Prometheus's text format 0.0.4."""
    server = UnisockServer(settings())
    host, port = await server.start("127.0.0.1", 0)
    try:
        status, _, _ = await http_exchange(host, port, "/healthz?probe=1")
        assert status == 200
        status, headers, body = await http_exchange(host, port, "/metrics?scrape=1")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "unisock_" in body
    finally:
        await server.close()
