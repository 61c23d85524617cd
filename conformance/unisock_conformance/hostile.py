"""A seeded stream of hostile client messages, derived from the schemas and the spec grammars.

Each :class:`Hostile` case is one text frame and the answer the spec requires for it: the
error codes allowed, whether the reply echoes the ``id``, or a ``pong``. Bases are the valid
examples published with the schemas (``schemas/v1/examples``); mutations follow section 1.5
(classification order), 1.4.1 (JSON limits), 4 (the channel grammar) and 5.5 (the filter
grammar), so every implementation can be held to the same answers.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from functools import cache
from typing import Any

from unisock.schemas import SCHEMA_ROOT, schema

__all__ = ["CATEGORIES", "Hostile", "stream"]


@dataclass(frozen=True)
class Hostile:
    """One frame and its required answer."""

    category: str
    text: str
    codes: frozenset[str]
    """Allowed ``error`` codes; empty means the reply is a ``pong``."""
    echo: str | None
    """The ``id`` the reply must carry (None: the reply carries no ``id``)."""


_REQUESTS = ("subscribe", "unsubscribe", "publish", "refresh")

BAD_PATTERNS = (
    "Tasks.42",
    "tasks..42",
    ".tasks",
    "tasks.",
    "tasks.>.x",
    "tasks.\uff0e42",
    "t\u0430sks",
    "a" * 65,
    ".".join(["s"] * 17),
    "x." * 127 + "xx",
    "$sys",
    "$other.x",
    "tasks .42",
    "",
    "tasks.*x",
)
"""Strings outside the channel-pattern grammar of section 4 (each is ``invalid_channel``)."""

BAD_FILTERS: tuple[Any, ...] = (
    {},
    {"eq": ["a", 1], "ne": ["a", 2]},
    {"like": ["a", "x"]},
    {"eq": ["A", 1]},
    {"eq": ["a"]},
    {"eq": ["a", [1]]},
    {"in": ["a", []]},
    {"in": ["a", list(range(33))]},
    {"lt": ["a", "1"]},
    {"gt": ["a", True]},
    {"exists": 3},
    {"and": []},
    {"or": [{"eq": ["a", 1]}] * 17},
    {"not": [{"eq": ["a", 1]}]},
    [],
    "eq",
    None,
)
"""Filters outside the grammar of section 5.5.1 (each is ``invalid_filter``)."""


@cache
def _examples() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for kind in (*_REQUESTS, "ping"):
        data = json.loads((SCHEMA_ROOT / "examples" / f"{kind}.json").read_text("utf-8"))
        found[kind] = [m for m in data["valid"] if isinstance(m, dict)]
    return found


def _base(rng: random.Random, kinds: tuple[str, ...], ident: str) -> dict[str, Any]:
    kind = rng.choice(kinds)
    message = copy.deepcopy(rng.choice(_examples()[kind]))
    message["id"] = ident
    return message


def _required(kind: str) -> list[str]:
    doc = schema(f"messages/{kind}")
    return [name for name in doc.get("required", []) if name not in ("type", "id")]


def _retyped(value: Any, rng: random.Random) -> Any:
    if isinstance(value, str):
        return rng.choice([7, None, [value], {"v": value}, True])
    if isinstance(value, int):
        return rng.choice([str(value), [value], None, 1.5])
    return rng.choice(["x", 7])


def _with_id(kind: str, message: dict[str, Any]) -> frozenset[str]:
    """Codes allowed for a refused message of ``kind``: a publish may meet the rate limit
    first (UNI-PUB-39)."""
    return frozenset({"rate_limited"}) if kind == "publish" else frozenset()


def _case(category: str, rng: random.Random, ident: str) -> Hostile:
    if category == "truncated":
        text = json.dumps(_base(rng, _REQUESTS, ident))
        return Hostile(
            category, text[: rng.randrange(1, len(text) - 1)], frozenset({"invalid_json"}), None
        )
    if category == "limits":
        text = json.dumps(_base(rng, _REQUESTS, ident))
        pick = rng.randrange(3)
        if pick == 0:
            depth = rng.choice([64, 65, 100, 981, 3000])  # member at depth 2: innermost > 64
            text = text[:-1] + ',"x":' + "[" * depth + "]" * depth + "}"
        elif pick == 1:
            text = text[:-1] + ',"x":' + rng.choice(["1e400", "-1e309", "1" + "0" * 320]) + "}"
        else:
            escape = rng.choice(["\\ud800", "\\udfff", "\\udc00\\ud800", "a\\udbff"])
            text = text[:-1] + f',"x":"{escape}"' + "}"
        return Hostile(category, text, frozenset({"invalid_json"}), None)
    if category == "not-object":
        inner = json.dumps(_base(rng, _REQUESTS, ident))
        text = rng.choice([f"[{inner}]", "42", '"ping"', "null", "true", "[]"])
        return Hostile(category, text, frozenset({"invalid_message"}), None)
    if category == "unknown-type":
        name = rng.choice(["presence", "hello2", "Subscribe", "sub scribe", "x" * 40, "ackk"])
        message = {"type": name, "id": ident, "channel": "tasks.1"}
        return Hostile(category, json.dumps(message), frozenset({"unknown_type"}), ident)
    if category == "schema":
        message = _base(rng, _REQUESTS, ident)
        kind = message["type"]
        field = rng.choice(_required(kind))
        if (kind == "publish" and field == "data") or rng.random() < 0.5:
            del message[field]
        else:
            message[field] = _retyped(message[field], rng)
        allowed = frozenset({"invalid_message"}) | _with_id(kind, message)
        return Hostile(category, json.dumps(message), allowed, ident)
    if category == "channel":
        message = _base(rng, ("subscribe", "unsubscribe", "publish"), ident)
        message["channel"] = rng.choice(BAD_PATTERNS)
        message.pop("from", None)
        message.pop("filter", None)
        allowed = frozenset({"invalid_channel"}) | _with_id(message["type"], message)
        return Hostile(category, json.dumps(message, ensure_ascii=False), allowed, ident)
    if category == "filter":
        message = _base(rng, ("subscribe",), ident)
        message.pop("from", None)
        node: Any = rng.choice(BAD_FILTERS)
        if rng.random() < 0.3:
            node = {"and": [{"eq": ["a", 1]}, node]}
        if rng.random() < 0.2:
            node = {"eq": ["a", 1]}
            for _ in range(rng.randint(8, 40)):
                node = {"not": node}  # deeper than 8, within the nesting limit
        message["filter"] = node
        return Hostile(category, json.dumps(message), frozenset({"invalid_filter"}), ident)
    # unknown members of a ping are ignored (UNI-TR-20)
    member = rng.choice(["priority", "v2", "zz", "filter", "token", "type2"])
    values: list[Any] = [1, "x", None, [1, {"a": []}], {"deep": [[[]]]}, "\u00e9\U0001f600"]
    ping: dict[str, Any] = {"type": "ping", "id": ident, member: rng.choice(values)}
    return Hostile("unknown-member", json.dumps(ping, ensure_ascii=False), frozenset(), ident)


CATEGORIES = (
    "truncated",
    "limits",
    "not-object",
    "unknown-type",
    "schema",
    "channel",
    "filter",
    "unknown-member",
)


def stream(seed: int, category: str, count: int) -> list[Hostile]:
    """``count`` cases of ``category``, the same for the same seed."""
    rng = random.Random(f"{seed}:{category}")
    return [_case(category, rng, f"h{index}") for index in range(count)]
