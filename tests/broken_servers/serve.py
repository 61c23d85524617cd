"""``python -m tests.broken_servers.serve VARIANT [--config F] [--secret S] [--port 0]``.

Applies one variant from :mod:`tests.broken_servers.variants` (``none`` applies nothing), then
serves exactly as ``unisock serve`` does, first line included, so a caller reads the port the
same way. A variant whose patch target is gone exits 3 before serving.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.broken_servers.variants import VARIANTS, VariantTargetMissing, apply

from unisock._version import PROTOCOL_TOKEN, __version__
from unisock.server import run_server
from unisock.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.broken_servers.serve")
    parser.add_argument("variant", choices=["none", *VARIANTS])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    if args.variant != "none":
        try:
            apply(args.variant)
        except VariantTargetMissing as exc:
            print(f"variant {args.variant}: patch target {exc} is gone", file=sys.stderr)
            return 3
    settings = load_settings(args.config, secret=args.secret)

    def ready(host: str, port: int) -> None:
        print(f"unisock {__version__} serving {PROTOCOL_TOKEN} on ws://{host}:{port}/", flush=True)

    asyncio.run(run_server(settings, args.host, args.port, on_ready=ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
