"""The adapter driver: runs a client's test adapter and speaks the adapter protocol with it.

Requests go to the adapter's standard input, one JSON object per line, each with a new
``seq``; replies and notifications come back on standard output (spec section 16). The
driver answers ``token_request`` notifications itself through a supplier the check sets.
Anything that breaks the adapter protocol is recorded in :attr:`AdapterProcess.problems`,
so the suite can tell "the adapter is broken" apart from "the client does not conform".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from unisock.schemas import format_errors, validator_for
from unisock_conformance.client_suite.harness import Signal

__all__ = [
    "ADAPTER_PROTOCOL",
    "AdapterBroken",
    "AdapterProcess",
    "Errored",
    "Notification",
    "OutputWatch",
    "Skipped",
]

ADAPTER_PROTOCOL: Final = 1
_LINE_LIMIT: Final = 1 << 24
_STDERR_KEEP: Final = 20000
KEEP_NULL: Final = ("token", "provide_token")


class AdapterBroken(Exception):
    """The adapter broke the adapter protocol (not a finding about the client)."""


class Skipped(Exception):
    """The adapter answered ``skipped``: its client cannot express the command."""

    def __init__(self, cmd: str, reason: str) -> None:
        super().__init__(f"{cmd}: {reason}")
        self.cmd = cmd
        self.reason = reason


class Errored(Exception):
    """The adapter answered ``errored``: the command did not complete."""

    def __init__(self, cmd: str, error: Mapping[str, Any]) -> None:
        super().__init__(f"{cmd}: {error.get('kind')}: {error.get('message')}")
        self.cmd = cmd
        self.error = dict(error)

    @property
    def kind(self) -> str:
        return str(self.error.get("kind"))

    @property
    def code(self) -> str | None:
        code = self.error.get("code")
        return code if isinstance(code, str) else None


@dataclass(frozen=True)
class Notification:
    """One notification line, with the driver's receive time."""

    at: float
    message: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.message.get("notify"))


TokenSupplier = Callable[[str], "str | None"]


class OutputWatch:
    """Finds given texts anywhere in what the adapter writes, however its reads split it.

    Each stream keeps, from its earlier reads, one octet less than the longest text, so a
    text split across two reads is still found. Only output read after a text was added is
    searched for it: add a secret before the adapter can know it.
    """

    def __init__(self) -> None:
        self._texts: dict[bytes, str] = {}
        self._tails: dict[str, bytes] = {}
        self.found: dict[str, tuple[str, str]] = {}
        """Label -> the stream where its text first appeared, and the line around it."""

    def add(self, text: str, label: str) -> None:
        if text:
            self._texts[text.encode("utf-8")] = label

    def feed(self, stream: str, data: bytes) -> None:
        if not self._texts:
            return
        window = self._tails.get(stream, b"") + data
        for text, label in self._texts.items():
            at = window.find(text)
            if at >= 0 and label not in self.found:
                # The line around it, at most 120 octets either side.
                start = max(window.rfind(b"\n", 0, at) + 1, at - 120)
                end = window.find(b"\n", at + len(text))
                end = at + len(text) + 120 if end < 0 else min(end, at + len(text) + 120)
                line = window[start:end].decode("utf-8", errors="replace")
                self.found[label] = (stream, self.redact(line))
        keep = max(len(text) for text in self._texts) - 1
        self._tails[stream] = window[-keep:] if keep else b""

    def redact(self, text: str) -> str:
        """``text`` with every watched text replaced by its label, longest first."""
        for secret in sorted(self._texts, key=len, reverse=True):
            text = text.replace(secret.decode("utf-8"), f"<{self._texts[secret]}>")
        return text


class AdapterProcess:
    """One running adapter: requests, replies, notifications and token requests."""

    def __init__(
        self,
        command: Sequence[str],
        signal: Signal,
        *,
        validate: bool = False,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.command = list(command)
        self.signal = signal
        self.validate = validate
        self.env = dict(env) if env is not None else None
        self.on_line = on_line
        self.problems: list[str] = []
        self.notifications: list[Notification] = []
        self.token_requests: list[Notification] = []
        self.token_supplier: TokenSupplier = lambda request: None
        self.hello_result: dict[str, Any] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._seq = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._answered: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stderr = bytearray()
        self._exited = False
        self.watch = OutputWatch()
        """Texts looked for in everything the adapter writes, on both streams."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        env = dict(os.environ) if self.env is None else self.env
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
                env=env,
            )
        except OSError as exc:
            raise AdapterBroken(f"cannot start the adapter {self.command!r}: {exc}") from None
        self._spawn(self._read_stdout())
        self._spawn(self._read_stderr())

    async def hello(self, time_scale: float, timeout: float) -> dict[str, Any]:
        """The adapter protocol handshake (UNI-ADP-3)."""
        try:
            result = await self.call(
                "hello", timeout=timeout, protocol=ADAPTER_PROTOCOL, time_scale=time_scale
            )
        except (Skipped, Errored, TimeoutError) as exc:
            raise AdapterBroken(f"the adapter did not accept hello: {exc}") from None
        if result.get("protocol") != ADAPTER_PROTOCOL:
            raise AdapterBroken(f"hello result names protocol {result.get('protocol')!r}")
        self.hello_result = result
        return result

    async def stop(self, timeout: float = 3.0) -> None:
        proc = self._proc
        if proc is None:
            return
        self._exited = True  # from here on, the adapter is expected to exit
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.request("exit", timeout=timeout)
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                self.problems.append("the adapter did not exit after exit and end of input")
                proc.kill()
                await proc.wait()
        if self._tasks:
            # What the adapter wrote last is still in the pipes: read it to the end.
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    @property
    def stderr_tail(self) -> str:
        return self._stderr[-4000:].decode("utf-8", errors="replace")

    # -- requests ---------------------------------------------------------------------------

    def send(self, cmd: str, **args: Any) -> asyncio.Future[dict[str, Any]]:
        """Send a request now; the future resolves with its reply (requests overlap)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise AdapterBroken("the adapter is not running")
        self._seq += 1
        seq = self._seq
        # None means "absent", except provide_token's token: null there means "no token".
        request = {
            "seq": seq,
            "cmd": cmd,
            **{k: v for k, v in args.items() if v is not None or (k, cmd) == KEEP_NULL},
        }
        if self.validate:
            self._check("request", request, "request")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        line = json.dumps(request, separators=(",", ":"))
        if self.on_line is not None:
            self.on_line(">", line)
        try:
            proc.stdin.write(line.encode("utf-8") + b"\n")
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.problems.append(f"cannot write to the adapter: {exc}")
            future.set_exception(AdapterBroken("the adapter closed its input"))
        return future

    async def request(self, cmd: str, *, timeout: float, **args: Any) -> dict[str, Any]:
        """Send a request and wait for its reply (raises ``TimeoutError``)."""
        future = self.send(cmd, **args)
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def call(self, cmd: str, *, timeout: float, **args: Any) -> dict[str, Any]:
        """Send a request; return its result or raise :class:`Skipped` / :class:`Errored`."""
        return self.outcome(cmd, await self.request(cmd, timeout=timeout, **args))

    @staticmethod
    def outcome(cmd: str, reply: Mapping[str, Any]) -> dict[str, Any]:
        kind = reply.get("outcome")
        if kind == "skipped":
            raise Skipped(cmd, str(reply.get("reason", "")))
        if kind == "errored":
            error = reply.get("error")
            raise Errored(cmd, error if isinstance(error, Mapping) else {"kind": "adapter"})
        result = reply.get("result")
        return dict(result) if isinstance(result, Mapping) else {}

    # -- notifications ----------------------------------------------------------------------

    def of_kind(self, kind: str, start: int = 0) -> list[dict[str, Any]]:
        return [n.message for n in self.notifications[start:] if n.kind == kind]

    def events(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.of_kind("event") if channel is None or e["channel"] == channel]

    async def notification(
        self,
        kind: str,
        timeout: float,
        where: Callable[[dict[str, Any]], bool] | None = None,
        start: int = 0,
    ) -> dict[str, Any] | None:
        """The first notification of ``kind`` from index ``start`` matching ``where``."""

        def probe() -> dict[str, Any] | None:
            for item in self.notifications[start:]:
                if item.kind == kind and (where is None or where(item.message)):
                    return item.message
            return None

        return await self.signal.wait_for(probe, timeout)

    # -- reading ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check(self, schema: str, message: Any, what: str) -> list[str]:
        errors = format_errors(validator_for(f"adapter/{schema}"), message)
        if errors:
            self.problems.append(f"{what} {json.dumps(message)[:300]} breaks the schema: {errors}")
        return errors

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(4096):
            self.watch.feed("stderr", chunk)
            self._stderr += chunk
            if len(self._stderr) > _STDERR_KEEP:
                del self._stderr[: len(self._stderr) - _STDERR_KEEP]

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:
                self.problems.append("a line longer than 16 MiB")
                continue
            if not raw:
                break
            self.watch.feed("stdout", raw)
            self._on_line(raw)
        await self._proc.wait()
        if not self._exited:
            code = self._proc.returncode
            self.problems.append(f"the adapter exited unexpectedly (status {code})")
        for seq, future in self._pending.items():
            if not future.done():
                future.set_exception(AdapterBroken(f"the adapter exited before replying to {seq}"))
        self.signal.bump()

    def _on_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if self.on_line is not None:
            self.on_line("<", text)
        if not text.strip():
            return
        try:
            message = json.loads(text)
        except ValueError:
            self.problems.append(f"a line that is not JSON: {text[:200]!r}")
            return
        if not isinstance(message, dict):
            self.problems.append(f"a line that is not a JSON object: {text[:200]!r}")
            return
        if self.validate:
            self._check("output", message, "line")
        if "seq" in message:
            self._on_reply(message)
        elif isinstance(message.get("notify"), str):
            self._on_notification(message)
        else:
            self.problems.append(f"a line that is neither reply nor notification: {text[:200]!r}")
        self.signal.bump()

    def _on_reply(self, message: dict[str, Any]) -> None:
        seq = message.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.problems.append(f"a reply with seq {seq!r}")
            return
        if message.get("outcome") not in ("result", "skipped", "errored"):
            self.problems.append(f"reply {seq} has outcome {message.get('outcome')!r}")
        future = self._pending.pop(seq, None)
        if future is None:
            what = "a second reply" if seq in self._answered else "a reply to no request"
            self.problems.append(f"{what} (seq {seq})")
            return
        self._answered.add(seq)
        if not future.done():
            future.set_result(message)

    def _on_notification(self, message: dict[str, Any]) -> None:
        note = Notification(time.monotonic(), message)
        self.notifications.append(note)
        if note.kind == "token_request" and not self._exited:
            self.token_requests.append(note)
            request = message.get("request")
            if not isinstance(request, str):
                self.problems.append("a token_request without request")
                return
            token = self.token_supplier(request)
            future = self.send("provide_token", request=request, token=token)
            future.add_done_callback(self._token_answered)

    def _token_answered(self, future: asyncio.Future[dict[str, Any]]) -> None:
        # While the adapter shuts down its client, a late answer may find nothing to answer.
        if self._exited or future.cancelled() or future.exception() is not None:
            return
        reply = future.result()
        if reply.get("outcome") != "result":
            self.problems.append(f"provide_token was answered {reply.get('outcome')!r}")
