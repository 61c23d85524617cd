"""The reference client's test adapter: ``unisock client-adapter`` (spec section 16).

The client conformance suite drives a client through a line-delimited JSON protocol on
standard input and output. This adapter only translates between that protocol and the
public API of :class:`unisock.client.Client`; it adds no retries, timers, reconnection or
filtering of its own (UNI-CONF-10), so what the suite observes is the client's behaviour.
Logs go to standard error; standard output carries protocol lines only (UNI-ADP-1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TextIO

from unisock import errors
from unisock._version import __version__
from unisock.client import (
    Client,
    ClientState,
    CloseInfo,
    ConnectionClosed,
    Event,
    Gap,
    LimitExceeded,
    NotConnected,
    PublishExpired,
    SubscriptionEnded,
)

__all__ = ["ADAPTER_NAME", "ADAPTER_PROTOCOL", "Adapter", "main"]

ADAPTER_PROTOCOL: Final = 1
ADAPTER_NAME: Final = "unisock-python-adapter"
COMMANDS: Final = (
    "hello",
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "refresh",
    "provide_token",
    "positions",
    "close",
    "exit",
)
_LINE_LIMIT: Final = 1 << 24
log = logging.getLogger("unisock.adapter")


class _Reply(Exception):
    """Ends a command with a non-result outcome."""

    def __init__(self, outcome: str, payload: dict[str, Any]) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.payload = payload


def _skipped(reason: str) -> _Reply:
    return _Reply("skipped", {"reason": reason})


def _errored(kind: str, message: str, **extra: Any) -> _Reply:
    error: dict[str, Any] = {"kind": kind, "message": message}
    error.update((key, value) for key, value in extra.items() if value is not None)
    return _Reply("errored", {"error": error})


def _close_json(close: CloseInfo | None) -> dict[str, Any] | None:
    if close is None:
        return None
    return {
        "code": close.code,
        "reason": close.reason[:123],
        "superseded": close.superseded,
        "local": close.local,
    }


class NoToken(Exception):
    """The suite answered a token request with ``null``: the application has no token."""


class Adapter:
    """One adapter process: at most one :class:`Client`, requests handled concurrently."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._client: Client | None = None
        self._initial_token: str | None = None
        self._token_requests: dict[str, asyncio.Future[str | None]] = {}
        self._token_counter = 0
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.exiting = asyncio.Event()

    # -- output -----------------------------------------------------------------------------

    def emit(self, message: Mapping[str, Any]) -> None:
        """Write one protocol line (UNI-ADP-1)."""
        self._write(json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n")

    def _notify(self, kind: str, **fields: Any) -> None:
        self.emit({"notify": kind, **{k: v for k, v in fields.items() if v is not None}})

    # -- input ------------------------------------------------------------------------------

    def feed(self, line: str) -> None:
        """Handle one input line; each request runs concurrently (UNI-ADP-4)."""
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except ValueError:
            log.warning("ignored a line that is not JSON")
            return
        if not isinstance(request, dict) or not isinstance(request.get("seq"), int):
            log.warning("ignored a request without seq")
            return
        task = asyncio.ensure_future(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: dict[str, Any]) -> None:
        seq = request["seq"]
        cmd = request.get("cmd")
        handler = getattr(self, f"_cmd_{cmd}", None) if cmd in COMMANDS else None
        try:
            if handler is None:
                raise _skipped(f"unknown command {cmd!r}")
            result = await handler(request)
            reply: dict[str, Any] = {"seq": seq, "outcome": "result", "result": result}
        except _Reply as done:
            reply = {"seq": seq, "outcome": done.outcome, **done.payload}
        except Exception as exc:  # an adapter fault, reported rather than crashing
            log.exception("command %s failed", cmd)
            reply = {
                "seq": seq,
                "outcome": "errored",
                "error": {"kind": "adapter", "message": type(exc).__name__},
            }
        self.emit(reply)
        if cmd == "exit":
            self.exiting.set()

    # -- client wiring ----------------------------------------------------------------------

    async def _provide(self) -> str:
        """The token provider: the token of ``connect`` first, then ask the suite each time."""
        if self._initial_token is not None:
            token, self._initial_token = self._initial_token, None
            return token
        self._token_counter += 1
        rid = f"t{self._token_counter}"
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._token_requests[rid] = future
        self._notify("token_request", request=rid)
        try:
            supplied = await future
        finally:
            self._token_requests.pop(rid, None)
        if supplied is None:
            raise NoToken("the application has no token")
        return supplied

    def _on_state(self, state: ClientState) -> None:
        client = self._client
        close = None
        if client is not None and state in (ClientState.WAITING, ClientState.CLOSED):
            close = _close_json(client.last_close)
        self._notify("state", state=state.value, close=close)

    def _start_pump(self) -> None:
        if self._client is None or (self._pump is not None and not self._pump.done()):
            return
        self._pump = asyncio.ensure_future(self._pump_events(self._client))

    async def _pump_events(self, client: Client) -> None:
        async for item in client.events():
            if isinstance(item, Event):
                self._notify(
                    "event",
                    channel=item.channel,
                    epoch=item.epoch,
                    offset=item.offset,
                    event=item.event,
                    data=item.data,
                    message_id=item.message_id,
                    ts=item.ts,
                    attrs=dict(item.attrs) if item.attrs else None,
                    publisher=item.publisher,
                    coalesced=list(item.coalesced) if item.coalesced else None,
                )
            elif isinstance(item, Gap):
                self._notify(
                    "resync",
                    channel=item.channel,
                    epoch=item.epoch,
                    offset=item.offset,
                    reason=item.reason,
                )
            elif isinstance(item, SubscriptionEnded):
                self._notify("subscription_ended", channel=item.channel, reason=item.reason)

    def _require_client(self) -> Client:
        if self._client is None:
            raise _errored("closed", "connect was never called")
        return self._client

    async def _call(self, operation: Awaitable[Any]) -> Any:
        """Await a client call, translating its failures into reply outcomes (UNI-ADP-6)."""
        try:
            return await operation
        except errors.ReplyError as exc:
            # An error reply names its request; a refusal before sending has no id.
            kind = "server" if exc.request_id is not None else "local"
            retry = getattr(exc, "retry_after_ms", None)
            raise _errored(kind, exc.message, code=exc.code, retry_after_ms=retry) from None
        except ConnectionClosed as exc:
            raise _errored("closed", str(exc), close=_close_json(exc.close)) from None
        except (NotConnected, PublishExpired) as exc:
            raise _errored("closed", str(exc)) from None
        except (LimitExceeded, ValueError) as exc:
            raise _errored("local", str(exc)) from None
        except TimeoutError:
            raise _errored("timeout", "no answer in time") from None

    # -- commands ---------------------------------------------------------------------------

    async def _cmd_hello(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if request.get("protocol") != ADAPTER_PROTOCOL:
            raise _errored("unsupported_protocol", f"this adapter speaks {ADAPTER_PROTOCOL}")
        # time_scale is not passed on: Client(time_scale=...) would also stretch the values
        # the harness announces in welcome, which the suite measures against.
        return {
            "protocol": ADAPTER_PROTOCOL,
            "adapter": {"name": ADAPTER_NAME, "version": __version__},
            "client": {"name": "unisock-python", "version": __version__},
            "commands": list(COMMANDS),
        }

    async def _cmd_connect(self, request: Mapping[str, Any]) -> dict[str, Any]:
        url, token = request.get("url"), request.get("token")
        if not isinstance(url, str) or not isinstance(token, str):
            raise _errored("bad_request", "connect needs url and token")
        self._initial_token = token
        if self._client is None:
            try:
                self._client = Client(
                    url,
                    self._provide,
                    on_state_change=self._on_state,
                )
            except ValueError as exc:
                raise _errored("local", str(exc)) from None
        timeout_ms = request.get("timeout_ms")
        timeout = timeout_ms / 1000 if isinstance(timeout_ms, int) else None
        client = self._client
        try:
            welcome = await self._call(client.connect(timeout=timeout))
        finally:
            self._start_pump()
        return {"connection_id": welcome.connection_id}

    async def _cmd_subscribe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if "from" in request or "since" in request:
            raise _skipped("the client keeps positions itself and takes none from the application")
        client = self._require_client()
        sub = await self._call(client.subscribe(request["channel"], filter=request.get("filter")))
        result: dict[str, Any] = {"channel": sub.channel}
        if sub.position is not None:
            result["position"] = {"epoch": sub.position.epoch, "offset": sub.position.offset}
        return result

    async def _cmd_unsubscribe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        try:
            await self._call(client.unsubscribe(request["channel"]))
        except errors.NotSubscribed as exc:
            raise _errored("local", exc.message, code=exc.code) from None
        return {}

    async def _cmd_publish(self, request: Mapping[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        ack = await self._call(
            client.publish(
                request["channel"],
                request["event"],
                request.get("data"),
                message_id=request.get("message_id"),
                attrs=request.get("attrs"),
                to=request.get("to"),
                exclude=request.get("exclude"),
                exclude_self=bool(request.get("exclude_self", False)),
                key=request.get("key"),
                user=request.get("user"),
            )
        )
        return {
            "ack": {
                "channel": ack.channel,
                "message_id": ack.message_id,
                "epoch": ack.epoch,
                "offset": ack.offset,
                "duplicate": ack.duplicate,
            }
        }

    async def _cmd_refresh(self, request: Mapping[str, Any]) -> dict[str, Any]:
        client = self._require_client()
        token = request.get("token")
        try:
            expires_at = await self._call(client.refresh(token if isinstance(token, str) else None))
        except NoToken:
            raise _errored("local", "no token supplied") from None
        return {"expires_at": expires_at}

    async def _cmd_provide_token(self, request: Mapping[str, Any]) -> dict[str, Any]:
        future = self._token_requests.get(str(request.get("request")))
        if future is None or future.done():
            raise _errored("bad_request", "no such pending token request")
        token = request.get("token")
        future.set_result(token if isinstance(token, str) and token else None)
        return {}

    async def _cmd_positions(self, request: Mapping[str, Any]) -> dict[str, Any]:
        client = self._client
        positions = client.positions() if client is not None else {}
        return {
            "positions": {
                channel: {"epoch": position.epoch, "offset": position.offset}
                for channel, position in positions.items()
            }
        }

    async def _cmd_close(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if self._client is not None:
            await self._client.close()
        return {}

    async def _cmd_exit(self, request: Mapping[str, Any]) -> dict[str, Any]:
        await self.shutdown()
        return {}

    async def shutdown(self) -> None:
        """Close the client and stop its tasks; pending token requests get no token."""
        for future in self._token_requests.values():
            if not future.done():
                future.set_result(None)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump


async def _serve(stdin: TextIO, stdout: TextIO) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    adapter = Adapter(write)
    exiting = asyncio.ensure_future(adapter.exiting.wait())
    while True:
        reading = asyncio.ensure_future(reader.readline())
        done, _ = await asyncio.wait({reading, exiting}, return_when=asyncio.FIRST_COMPLETED)
        if exiting in done:
            reading.cancel()
            break
        line = reading.result()
        if not line:  # end of input: the suite is gone (UNI-ADP-11)
            break
        adapter.feed(line.decode("utf-8", errors="replace"))
    await adapter.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unisock client-adapter",
        description="Drive the reference client through the conformance adapter protocol "
        "on standard input and output.",
    )
    parser.add_argument("--log-level", default="WARNING", help="log level on standard error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unisock client-adapter``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=str(args.log_level).upper())
    try:
        return asyncio.run(_serve(sys.stdin, sys.stdout))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
