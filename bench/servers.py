"""The Python servers under test, one per process: ``python -m bench.servers KIND [CONFIG]``.

Each prints ``PORT <n>`` once listening on 127.0.0.1 and then serves until killed. The driver
reads the process's CPU time and memory from ``/proc``, so nothing here measures anything.

Kinds: ``bare`` (``websockets.broadcast``), ``floor`` (one pre-built frame written to every
transport), ``pysio`` (python-socketio on aiohttp, rooms), ``unisock`` (the reference server;
CONFIG is a JSON object of ``ServerConfig`` changes, a Redis URL among them). The bare servers
and ``pysio`` speak the same room protocol as the Node peers in ``bench/node/server.js``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from typing import Any

from bench import _harness as h


async def _bare(floor: bool) -> int:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    from unisock.wsframe import text_frame

    rooms: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        joined: list[str] = []
        try:
            async for message in ws:
                assert isinstance(message, str)
                if message.startswith("sub "):
                    room = message[4:]
                    rooms.setdefault(room, set()).add(ws)
                    joined.append(room)
                    await ws.send("ok")
                    continue
                # "R<room>\n<frame>": the frame goes to every member of the room.
                room, _, text = message[1:].partition("\n")
                members = rooms.get(room, ())
                if floor:
                    frame = text_frame(text.encode())
                    for member in members:
                        member.transport.write(frame)
                else:
                    broadcast(members, text)
        except ConnectionClosed:
            pass
        finally:
            for room in joined:
                rooms[room].discard(ws)

    server = await serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, server_header=None
    )
    return int(next(iter(server.sockets)).getsockname()[1])


async def _pysio() -> int:
    import socketio  # type: ignore[import-not-found]
    from aiohttp import web  # type: ignore[import-not-found]

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        transports=["websocket"],
        ping_interval=3600,
        ping_timeout=3600,
        cors_allowed_origins=None,
    )
    app = web.Application()
    sio.attach(app)

    @sio.on("sub")  # type: ignore[misc]
    async def sub(sid: str, room: str) -> str:
        joined = sio.enter_room(sid, room)
        if inspect.isawaitable(joined):
            await joined
        return "ok"

    @sio.on("pub")  # type: ignore[misc]
    async def pub(sid: str, room: str, data: Any) -> None:
        await sio.emit("ev", data, room=room)

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return int(server.sockets[0].getsockname()[1])


async def _unisock(config: dict[str, Any]) -> int:
    from unisock.server import UnisockServer, freeze_startup_objects, start_collector

    server = UnisockServer(h.bench_settings(**config))
    _, port = await server.start("127.0.0.1", 0)
    freeze_startup_objects()  # as ``unisock serve`` does
    _servers.append((server, start_collector(server)))
    return port


_servers: list[Any] = []


async def _main(kind: str, config: dict[str, Any]) -> None:
    if kind in ("bare", "floor"):
        port = await _bare(kind == "floor")
    elif kind == "pysio":
        port = await _pysio()
    elif kind == "unisock":
        port = await _unisock(config)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    print(f"PORT {port}", flush=True)
    # The driver holds our stdin: when it goes away, however it ends, so does this server.
    gone = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), gone.set)
    await gone.wait()
    os._exit(0)


def main(argv: list[str]) -> None:
    kind = argv[0]
    config = json.loads(argv[1]) if len(argv) > 1 else {}
    loop = config.pop("_loop", "asyncio")
    h.raise_fd_limit()
    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(_main(kind, config))
    else:
        asyncio.run(_main(kind, config))


if __name__ == "__main__":
    main(sys.argv[1:])
