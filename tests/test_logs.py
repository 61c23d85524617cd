"""Structured logs are JSON lines and never carry a token (UNI-SEC)."""

from __future__ import annotations

import json
import logging

from unisock.auth import mint_token
from unisock.logs import JsonFormatter, redact

SECRET = "s" * 40


def test_formatter_writes_one_json_object_with_level_logger_and_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "unisock.server", "levelname": "WARNING", "msg": "closed %s", "args": ("c1",)}
    )
    record.code = 4200
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "unisock.server"
    assert entry["msg"] == "closed c1" and entry["code"] == 4200
    assert entry["ts"].endswith("Z")


def test_formatter_redacts_tokens_in_messages_and_tracebacks() -> None:
    token = mint_token(SECRET, "acme", "alice")
    try:
        raise ValueError(f"bad {token}")
    except ValueError:
        record = logging.makeLogRecord({"msg": "hello %s", "args": (token,)})
        import sys

        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert token not in text
    assert json.loads(text)["msg"] == "hello [token]"
    assert redact(f"a {token} b") == "a [token] b"
