"""``python -m taskboard [--port 8000] [--data DIR]``: serve the task board until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from taskboard.app import Taskboard


async def serve(port: int, data: Path, host: str) -> None:
    board = Taskboard(data, port)
    await board.start(host)
    print(f"taskboard: http://{host}:{port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await board.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m taskboard", description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", type=Path, default=Path(".taskboard-data"))
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.data, args.host))


if __name__ == "__main__":
    main()
