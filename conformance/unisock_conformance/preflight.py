"""The preflight: before any check, one connection per node tells a setup error apart.

An unreachable URL, a refused handshake, a token the server refuses (wrong secret, key,
issuer or audience), a draining server or a broken token command would otherwise fail
hundreds of checks and read as "non-conforming". The preflight names the cause in one line
and the run ends with its own exit status (spec 14.2: verdict ``setup error``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Final

import pytest

from unisock_conformance.deployment import Deployment
from unisock_conformance.grading import (
    EXIT_DRAINING,
    EXIT_HANDSHAKE_REFUSED,
    EXIT_TOKEN_COMMAND,
    EXIT_TOKEN_REFUSED,
    EXIT_UNREACHABLE,
)
from unisock_conformance.wire import FrameTimeout, HandshakeRefused, open_conn

__all__ = ["SetupError", "preflight"]

# Close codes that say "the server is going away or draining" (spec 12, 9.5).
_DRAIN_CLOSES: Final = frozenset({1001, 1012, 4300})


@dataclass(frozen=True)
class SetupError:
    """Why no check can run: ``status`` is the run's exit status, ``message`` one line."""

    status: int
    kind: str
    message: str


def _flag(cli: bool, name: str) -> str:
    return f"--{name}" if cli else f"--unisock-{name}"


def preflight(
    deployment: Deployment, *, cli: bool = True
) -> tuple[dict[str, Any], SetupError | None]:
    """Mint one ordinary token and say hello on every node; the main node's ``welcome``.

    Returns ``({}, error)`` when a setup error stops the run. ``cli`` picks the option names
    the messages use (``--secret`` or ``--unisock-secret``).
    """
    from unisock_conformance.signer import TokenCommandError

    name = f"probe{deployment.seed:x}"
    try:
        token = deployment.mint(f"t{name}", f"u{name}")
    except TokenCommandError as error:
        return {}, SetupError(EXIT_TOKEN_COMMAND, "token-command", f"token command: {error}")
    except pytest.skip.Exception as refusal:  # the command refused an ordinary token
        text = str(refusal.msg).removeprefix("not-run: ")
        return {}, SetupError(EXIT_TOKEN_COMMAND, "token-command", f"token command: {text}")
    welcome: dict[str, Any] = {}
    for url in (deployment.url, *deployment.node_urls):
        found, problem = _hello(deployment, url, token, cli)
        if problem is not None:
            return {}, problem
        welcome = welcome or found
    return welcome, None


def _hello(
    deployment: Deployment, url: str, token: str, cli: bool
) -> tuple[dict[str, Any], SetupError | None]:
    try:
        conn = open_conn(
            url,
            name="preflight",
            origin=deployment.origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
        )
    except HandshakeRefused as refused:
        return {}, _refused(url, refused, deployment, cli)
    except (OSError, TimeoutError) as error:
        reason = error.strerror or str(error) or type(error).__name__
        return {}, SetupError(EXIT_UNREACHABLE, "unreachable", f"cannot reach {url}: {reason}")
    try:
        conn.send({"type": "hello", "token": token})
        try:
            frame = conn.expect(None, skip=())
        except (FrameTimeout, AssertionError):
            frame = {}
        if frame.get("type") == "welcome" and not any(
            f.get("type") == "drain" for f in conn.frames
        ):
            return dict(frame), None
        if frame.get("type") == "drain":
            return {}, _draining(url)
        code = conn.close_code
        if code is None and frame.get("type") != "welcome":
            with contextlib.suppress(Exception):
                code, _ = conn.expect_close(timeout=deployment.timeout(1.0))
        if code is not None and 4100 <= code <= 4199:
            return {}, _token_refused(url, code, deployment, cli)
        if code in _DRAIN_CLOSES or any(f.get("type") == "drain" for f in conn.frames):
            return {}, _draining(url)
        return dict(frame), None  # anything else is for the checks to judge
    finally:
        conn.close()


def _refused(url: str, refused: HandshakeRefused, deployment: Deployment, cli: bool) -> SetupError:
    if refused.status == 503:
        return _draining(url, "HTTP 503")
    hint = ""
    if refused.status == 403:
        origin = _flag(cli, "origin")
        hint = (
            f"; is {deployment.origin!r} in its Origin allowlist ({origin})?"
            if deployment.origin
            else f"; does it need an Origin ({origin}) or other headers ({_flag(cli, 'header')})?"
        )
    what = f"HTTP {refused.status}" if refused.status is not None else str(refused)
    return SetupError(
        EXIT_HANDSHAKE_REFUSED,
        "handshake-refused",
        f"{url} refused the WebSocket handshake ({what}){hint}",
    )


def _token_refused(url: str, code: int, deployment: Deployment, cli: bool) -> SetupError:
    source = _flag(cli, "token-command") if deployment.token_command else _flag(cli, "secret")
    issuer, audience = _flag(cli, "issuer"), _flag(cli, "audience")
    return SetupError(
        EXIT_TOKEN_REFUSED,
        "token-refused",
        f"{url} refused the suite's token (close {code}): check {source}, {issuer} and {audience}",
    )


def _draining(url: str, how: str = "") -> SetupError:
    detail = f" ({how})" if how else ""
    return SetupError(
        EXIT_DRAINING,
        "draining",
        f"{url} is draining{detail}: run the suite against a node that serves",
    )
