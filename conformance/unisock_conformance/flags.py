"""Option names in messages: checks write the ``unisock conformance server`` names
(``--drain-command``); under plain pytest the same options are ``--unisock-drain-command``,
and every message the suite shows is rewritten to name the options the user actually typed."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["OPTIONS", "for_pytest"]

OPTIONS: Final = (
    "any-origin",
    "audience",
    "broadcaster-token",
    "coalescing-channel",
    "drain-command",
    "example-event-types",
    "header",
    "issuer",
    "node-url",
    "origin",
    "outage-command",
    "profile",
    "recover-command",
    "require-complete",
    "reset-command",
    "secret",
    "seed",
    "time-budget",
    "time-scale",
    "token-command",
)
_OPTION: Final = re.compile(r"(?<![\w-])--(" + "|".join(map(re.escape, OPTIONS)) + r")(?![\w-])")


def for_pytest(text: str) -> str:
    """``text`` with every CLI option name replaced by its pytest option name."""
    return _OPTION.sub(r"--unisock-\1", text)
