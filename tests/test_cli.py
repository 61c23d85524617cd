"""The ``unisock`` command end to end: serve, token, listen, publish, validate (subprocesses)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from server_harness import LIMIT, SECRET, metric_value

SCRIPT = Path(sys.executable).with_name("unisock")
UNISOCK = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "unisock.cli"]
TIMEOUT = 4 * LIMIT


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*UNISOCK, *args], capture_output=True, text=True, timeout=TIMEOUT, check=check
    )


def mint(tenant: str, sub: str, *grants: str) -> str:
    args = ["token", "--secret", SECRET, "--tenant", tenant, "--sub", sub]
    for grant in grants:
        args += ["--subscribe", grant, "--publish", grant]
    return run(*args, check=True).stdout.strip()


def metrics(url: str) -> str:
    http = url.replace("ws://", "http://").rstrip("/") + "/metrics"
    with urllib.request.urlopen(http, timeout=LIMIT) as response:
        body: bytes = response.read()
    return body.decode()


def wait_for_messages(url: str, count: float) -> None:
    """Wait until the server has received ``count`` frames (read from its /metrics).

    The listener prints nothing until an event arrives, so its subscription is observed on
    the server: the in-memory broker answers a subscribe without yielding, so once the
    counter shows the subscribe frame, the subscription is active.
    """
    deadline = time.monotonic() + TIMEOUT
    while metric_value(metrics(url), "unisock_messages_in_total") < count:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[str]:
    """``unisock serve --port 0``: the URL comes from the first line it prints."""
    proc = subprocess.Popen(
        [*UNISOCK, "serve", "--port", "0", "--secret", SECRET],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"ws://[0-9.]+:\d+/", first)
    assert match, first + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
    try:
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0


def test_cli_token_prints_a_signed_token_with_the_requested_claims() -> None:
    """``unisock token`` mints an HS256 token whose claims are the options given."""
    result = run(
        "token",
        "--secret",
        SECRET,
        "--tenant",
        "acme",
        "--sub",
        "alice",
        "--subscribe",
        "tasks.>",
        "--publish",
        "tasks.*",
        "--sid",
        "tab-1",
        "--ttl",
        "60",
    )
    assert result.returncode == 0, result.stderr
    claims: dict[str, Any] = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["tenant"], claims["sub"], claims["sid"]) == ("acme", "alice", "tab-1")
    assert claims["grants"] == {"subscribe": ["tasks.>"], "publish": ["tasks.*"]}
    assert claims["exp"] - claims["iat"] == 60


def test_cli_serve_listen_and_publish_deliver_within_the_tenant_only(server: str) -> None:
    """An event of another tenant does not arrive; the fence event of the own tenant does."""
    listener_token = mint("acme", "alice", "tasks.>")
    listener = subprocess.Popen(
        [*UNISOCK, "listen", server, "--token", listener_token, "--count", "1", "tasks.>"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_messages(server, 2)  # hello + subscribe
        foreign = run(
            "publish",
            server,
            "--token",
            mint("globex", "mallory", "tasks.>"),
            "tasks.1",
            "note.posted",
            '{"from": "globex"}',
        )
        assert foreign.returncode == 0, foreign.stderr
        assert json.loads(foreign.stdout)["offset"] == 1
        own = run(
            "publish",
            server,
            "--token",
            mint("acme", "bob", "tasks.>"),
            "--message-id",
            "fence-1",
            "tasks.1",
            "note.posted",
            '{"from": "acme"}',
        )
        assert own.returncode == 0, own.stderr
        ack = json.loads(own.stdout)
        assert (ack["type"], ack["message_id"], ack["duplicate"]) == ("ack", "fence-1", False)
        out, err = listener.communicate(timeout=TIMEOUT)
        assert listener.returncode == 0, err
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    lines = out.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["data"] == {"from": "acme"}
    assert (event["channel"], event["message_id"], event["publisher"]) == (
        "tasks.1",
        "fence-1",
        "bob",
    )
    assert listener_token not in out + err


def test_cli_publish_reports_a_refused_publish(server: str) -> None:
    """A publish outside the grants exits 1 with a readable reason on stderr."""
    result = run(
        "publish",
        server,
        "--token",
        mint("acme", "alice", "tasks.>"),
        "docs.1",
        "note.posted",
        "{}",
    )
    assert result.returncode == 1
    assert "forbidden" in result.stderr or "grants" in result.stderr


def test_cli_publish_refuses_data_that_is_not_json() -> None:
    """DATA_JSON must parse; nothing is sent otherwise (exit 2)."""
    result = run("publish", "ws://127.0.0.1:9/", "--token", "t", "tasks.1", "a", "{not json")
    assert result.returncode == 2
    assert "not JSON" in result.stderr


def test_cli_validate_accepts_valid_messages_and_explains_invalid_ones(tmp_path: Path) -> None:
    """``unisock validate`` names each file and each problem; exit 1 when any is invalid."""
    valid = tmp_path / "hello.json"
    valid.write_text(json.dumps({"type": "hello", "token": mint("acme", "alice")}))
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {
                "type": "event",
                "channel": "tasks.1",
                "epoch": "e-1",
                "offset": 1,
                "event": "a",
                "data": None,
                "message_id": "m",
                "ts": 1,
            }
        )
    )
    ok = run("validate", str(valid), str(event))
    assert ok.returncode == 0, ok.stdout
    assert f"{valid}: valid hello message" in ok.stdout
    assert f"{event}: valid event message" in ok.stdout

    invalid = tmp_path / "publish.json"
    invalid.write_text(
        json.dumps({"type": "publish", "id": "p1", "channel": "tasks.1", "event": "a", "data": 1})
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = run("validate", str(valid), str(invalid), str(broken))
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert any(line.startswith(f"{invalid}: ") and "message_id" in line for line in lines)
    assert any(line.startswith(f"{broken}: cannot read JSON") for line in lines)
    assert f"{valid}: valid hello message" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
