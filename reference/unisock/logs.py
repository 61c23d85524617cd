"""Structured logs for ``unisock serve``: one JSON object per line, never a token.

Log aggregators parse JSON lines without configuration. Tokens never reach a log record in
the first place (the server logs connection ids, codes and exception types, UNI-SEC); the
formatter also redacts anything shaped like a JWT as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_STANDARD = set(vars(logging.makeLogRecord({})))


def redact(text: str) -> str:
    """Replace every JWT-shaped substring with ``[token]``."""
    return _JWT.sub("[token]", text)


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., ...extra}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("websockets").setLevel("WARNING")
