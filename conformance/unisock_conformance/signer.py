"""The operator's token command, driven by the token command protocol (spec section 14.6).

A deployment that signs its tokens with keys the suite must not hold (RS256, ES256, a token
service) gives the suite a command instead of a secret. The suite starts it once, writes one
request per line (``{"claims": {...}}``) and reads one reply per line (``{"token": "..."}`` or
``{"error": "..."}``), so that every token a check needs costs one line, not one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import subprocess
import threading
from collections.abc import Mapping
from typing import Any, Final

from unisock.schemas import format_errors, validator_for

__all__ = ["PROTOCOL_VERSION", "TokenCommand", "TokenCommandError", "TokenRefused"]

PROTOCOL_VERSION: Final = 1
_EOF: Final = object()


class TokenCommandError(RuntimeError):
    """The token command cannot be used: it did not start, exited, or broke the protocol.

    This is a setup error of the run, not a finding about the server.
    """


class TokenRefused(RuntimeError):
    """The token command answered ``{"error": ...}``: it will not sign these claims."""


class TokenCommand:
    """One running token command; thread-safe (timing checks sign from threads of their own)."""

    def __init__(self, command: str, timeout_s: float) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._broken: str | None = None

    def _start(self) -> subprocess.Popen[str]:
        try:
            argv = shlex.split(self.command)
        except ValueError as error:
            raise TokenCommandError(f"the token command cannot be parsed: {error}") from None
        if not argv:
            raise TokenCommandError("the token command is empty")
        try:
            # stderr is the operator's: its diagnostics go to the terminal, never to reports.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=os.environ.copy(),
            )
        except OSError as error:
            raise TokenCommandError(
                f"the token command could not be started: {error.strerror or error}"
            ) from None
        threading.Thread(target=self._read, args=(process,), daemon=True).start()
        return process

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put(line)
        self._lines.put(_EOF)

    def sign(self, claims: Mapping[str, Any]) -> str:
        """The compact JWT the command signed for exactly ``claims``.

        Raises :class:`TokenRefused` when the command declines, :class:`TokenCommandError`
        when it cannot be used (then every later call fails the same way).
        """
        return self.request({"claims": dict(claims)})

    def request(self, message: Mapping[str, Any]) -> str:
        """Send one request object (``claims`` and any further members); its token."""
        # ASCII escapes: a claim may hold a lone surrogate (a token the server must refuse),
        # which has no UTF-8 form.
        request = json.dumps(dict(message), separators=(",", ":"))
        with self._lock:
            if self._broken is not None:
                raise TokenCommandError(self._broken)
            try:
                return self._exchange(request)
            except TokenCommandError as error:
                self._broken = str(error)
                self._stop()
                raise

    def _exchange(self, request: str) -> str:
        if self._process is None:
            self._process = self._start()
        process = self._process
        assert process.stdin is not None
        try:
            process.stdin.write(request + "\n")
            process.stdin.flush()
        except OSError:
            raise TokenCommandError(self._exited(process)) from None
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TokenCommandError(
                f"the token command did not answer within {self.timeout_s:.1f} s"
            ) from None
        if line is _EOF:
            raise TokenCommandError(self._exited(process))
        return _token_of(str(line))

    def _exited(self, process: subprocess.Popen[str]) -> str:
        try:
            status = process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return "the token command closed its standard output"
        return f"the token command exited with status {status} before answering"

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """End of run: close the command's standard input and let it exit."""
        with self._lock:
            self._stop()
            self._process = None


def _token_of(line: str) -> str:
    """The token of one reply line; a malformed reply is a setup error."""
    try:
        reply = json.loads(line)
    except ValueError:
        raise TokenCommandError(
            "the token command wrote a line that is not JSON (replies are "
            '{"token": "..."} or {"error": "..."}, one per line)'
        ) from None
    errors = format_errors(validator_for("token-command/reply"), reply)
    if errors:
        raise TokenCommandError(
            f"the token command wrote a reply that breaks token-command/reply.json: {errors}"
        )
    if "error" in reply:
        raise TokenRefused(str(reply["error"]))
    return str(reply["token"])
