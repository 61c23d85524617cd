"""The ``unisock`` command: serve, mint tokens, watch and publish, validate messages.

The forms of these commands are fixed by the docs and CI; keep them stable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unisock._version import PROTOCOL_TOKEN, SPEC_VERSION, __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line grammar, in one place so the docs can render it."""
    parser = argparse.ArgumentParser(
        prog="unisock",
        description="Unisock reference server, client tools and conformance suite.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"unisock {__version__} (spec {SPEC_VERSION}, wire {PROTOCOL_TOKEN})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the reference server (in-memory broker, or Redis for several nodes)",
        description="Run the reference server, with the embedded in-memory broker or, for a "
        "cluster of nodes, Redis. SIGTERM drains, SIGINT stops, SIGHUP discards retained "
        "history and starts a new epoch.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any)")
    serve.add_argument("--secret", help="HS256 secret (default: $UNISOCK_SECRET, else generated)")
    serve.add_argument("--config", type=Path, help="TOML file with server settings")
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="'memory' (default) or redis://HOST:PORT/DB shared by every node of a cluster "
        "(overrides the config file's broker)",
    )
    serve.add_argument(
        "--broker-prefix",
        metavar="PREFIX",
        help="prefix of every Redis key, for deployments sharing one Redis (default unisock:)",
    )
    serve.add_argument(
        "--log-level", default="INFO", help="log level of the JSON-lines log on stderr"
    )

    token = commands.add_parser("token", help="print a signed HS256 development token")
    token.add_argument("--secret", required=True, help="the server's HS256 secret")
    token.add_argument("--tenant", required=True)
    token.add_argument("--sub", required=True, help="the user (subject)")
    token.add_argument("--subscribe", action="append", default=[], metavar="PATTERN")
    token.add_argument("--publish", action="append", default=[], metavar="PATTERN")
    token.add_argument("--broadcaster", action="store_true", help="role broadcaster")
    token.add_argument("--sid", help="session id (one connection per session)")
    token.add_argument("--ttl", type=_positive_int, default=3600, metavar="SECONDS")

    listen = commands.add_parser("listen", help="subscribe and print events as JSON lines")
    listen.add_argument("url")
    listen.add_argument("--token", required=True)
    listen.add_argument("--origin", help="Origin header to send")
    listen.add_argument("--count", type=_positive_int, help="exit after this many events")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")

    publish = commands.add_parser("publish", help="publish one event and print the ack")
    publish.add_argument("url")
    publish.add_argument("--token", required=True)
    publish.add_argument("--origin", help="Origin header to send")
    publish.add_argument("--message-id", help="idempotency key (default: a random UUID)")
    publish.add_argument("channel")
    publish.add_argument("event_type", metavar="EVENT_TYPE")
    publish.add_argument("data", metavar="DATA_JSON")

    validate = commands.add_parser("validate", help="validate message files against the schemas")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")

    from unisock_conformance.client_suite.runner import add_client_parser
    from unisock_conformance.runner import add_server_parser

    conformance = commands.add_parser("conformance", help="run a conformance suite")
    targets = conformance.add_subparsers(dest="target", required=True, metavar="TARGET")
    add_server_parser(targets)
    add_client_parser(targets)

    adapter = commands.add_parser(
        "client-adapter", help="the reference client's test adapter (JSON lines on stdin/stdout)"
    )
    adapter.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unisock`` console script."""
    args = build_parser().parse_args(argv)
    handler = {
        "serve": _serve,
        "token": _token,
        "listen": _listen,
        "publish": _publish,
        "validate": _validate,
        "conformance": lambda parsed: int(parsed.conformance_handler(parsed)),
        "client-adapter": _client_adapter,
    }[args.command]
    from unisock.errors import UnisockError

    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except (UnisockError, OSError, ValueError) as exc:
        # Readable one-line failures for terminal users; tokens never appear in these.
        print(f"unisock {args.command}: {exc}", file=sys.stderr)
        return 1


def _token(args: argparse.Namespace) -> int:
    from unisock.auth import mint_token

    print(
        mint_token(
            args.secret,
            args.tenant,
            args.sub,
            subscribe=args.subscribe,
            publish=args.publish,
            broadcaster=args.broadcaster,
            ttl_s=args.ttl,
            sid=args.sid,
        )
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from unisock import logs
    from unisock.server import run_server
    from unisock.settings import load_settings

    logs.configure(args.log_level)  # JSON lines on stderr; tokens never logged (UNI-SEC)
    secret = args.secret or os.environ.get("UNISOCK_SECRET")
    generated = secret is None
    if secret is None:
        secret = secrets.token_urlsafe(32)
    settings = load_settings(args.config, secret=secret)
    overrides = {"broker": args.broker, "broker_key_prefix": args.broker_prefix}
    chosen = {name: value for name, value in overrides.items() if value is not None}
    if chosen:
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, **chosen)
        )

    def ready(host: str, port: int) -> None:
        url = f"ws://{host}:{port}/"
        print(f"unisock {__version__} serving {PROTOCOL_TOKEN} on {url}", flush=True)
        if generated:
            print(
                "development secret (pass --secret or UNISOCK_SECRET to choose one):\n"
                f"  {secret}\n"
                "mint a token with:\n"
                f"  unisock token --secret {secret} --tenant acme --sub alice "
                "--subscribe 'tasks.>' --publish 'tasks.>'",
                flush=True,
            )

    asyncio.run(run_server(settings, args.host, args.port, on_ready=ready))
    return 0


def _listen(args: argparse.Namespace) -> int:
    from unisock.client import Client

    async def run() -> None:
        client = Client(args.url, args.token, origin=args.origin)
        await client.connect()
        for channel in args.channels:
            await client.subscribe(channel)
        seen = 0
        async for item in client.events():
            print(json.dumps(_item_json(item), ensure_ascii=False), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        await client.close()

    asyncio.run(run())
    return 0


def _item_json(item: object) -> dict[str, Any]:
    """One line of ``unisock listen`` output: the item as a wire-like JSON object."""
    from unisock.client import Event, Gap

    kind = "event" if isinstance(item, Event) else "gap" if isinstance(item, Gap) else "ended"
    body = dataclasses.asdict(item)  # type: ignore[call-overload]
    if kind == "event":
        # The wire form: optional members only when they say something.
        for name in ("attrs", "publisher", "coalesced"):
            if not body[name]:
                del body[name]
    return {"type": kind, **body}


def _publish(args: argparse.Namespace) -> int:
    from unisock.client import Client
    from unisock.errors import UnisockError

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"DATA_JSON is not JSON: {exc}", file=sys.stderr)
        return 2

    async def run() -> dict[str, Any]:
        client = Client(args.url, args.token, origin=args.origin, reconnect=False)
        await client.connect()
        try:
            ack = await client.publish(
                args.channel, args.event_type, data, message_id=args.message_id
            )
        finally:
            await client.close()
        wire = dataclasses.asdict(ack)
        return {"type": "ack", "id": wire.pop("id"), **wire}

    try:
        print(json.dumps(asyncio.run(run()), ensure_ascii=False))
    except UnisockError as exc:
        print(f"publish refused: {exc}", file=sys.stderr)
        return 1
    return 0


def _client_adapter(args: argparse.Namespace) -> int:
    from unisock.adapter import main as adapter_main

    return adapter_main(["--log-level", args.log_level])


def _validate(args: argparse.Namespace) -> int:
    from unisock.schemas import (
        CLIENT_MESSAGE_TYPES,
        validate_client_message,
        validate_server_message,
    )

    failures = 0
    for path in args.files:
        try:
            message = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{path}: cannot read JSON: {exc}")
            failures += 1
            continue
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in CLIENT_MESSAGE_TYPES:
            errors = validate_client_message(message)
            if errors and not validate_server_message(message):
                errors = []
        else:
            errors = validate_server_message(message)
        if errors:
            failures += 1
            for error in errors:
                print(f"{path}: {error}")
        else:
            print(f"{path}: valid {kind} message")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
