"""Mutations of schema-generated messages: structure first, then the text itself.

Structural mutations keep a message JSON but break one rule (a missing or retyped member, a
value at or past a limit); text mutations break the JSON (truncation, stray characters,
escapes of lone surrogates, numbers beyond binary64, nesting past 64). Each mutation aims at
a rule of spec sections 1.4 to 1.7, 4, 5 and 6 or at a parser's weak spot.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import strategies as st

from fuzz.schemagen import any_json, client_message

__all__ = ["BOUNDARY_VALUES", "cheap_mutants", "hostile_text", "mutated_message"]

BOUNDARY_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**53 - 1,
    2**53,
    2**53 + 1,
    -(2**63),
    2**64,
    1e308,
    -0.0,
    5e-324,
    "",
    " ",
    "x" * 65,
    "x" * 257,
    "a" * 8193,
    "\u0000",
    "\u202e",
    "\ufeff",
    "\uff34asks.42",  # a full-width T
    "tasks..42",
    "$sys",
    "$me.>",
    ">",
    "*",
    "tasks.>.x",
    [],
    {},
    [[[]]],
    {"and": []},
)
"""Values at the edges of the schemas' and the spec's limits."""


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, member in value.items():
            found += _paths(member, (*prefix, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            found += _paths(member, (*prefix, index))
    return found


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _set(value[head], rest, new)}
    copy = list(value)
    copy[head] = _set(copy[head], rest, new)
    return copy


def _drop(value: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k != path[0]}
        return [v for i, v in enumerate(value) if i != path[0]]
    head = path[0]
    if isinstance(value, dict):
        return {**value, head: _drop(value[head], path[1:])}
    copy = list(value)
    copy[head] = _drop(copy[head], path[1:])
    return copy


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated_message(draw: st.DrawFn) -> Any:
    """A generated message with zero to three structural mutations."""
    message: Any = draw(client_message)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = _paths(message)
        path = draw(st.sampled_from(paths))
        action = draw(
            st.sampled_from(["boundary", "retype", "drop", "nest", "unknown", "duplicate"])
        )
        if action == "boundary":
            message = _set(message, path, draw(st.sampled_from(BOUNDARY_VALUES)))
        elif action == "retype":
            message = _set(message, path, draw(any_json))
        elif action == "drop" and path:
            message = _drop(message, path)
        elif action == "nest":
            depth = draw(st.sampled_from([1, 7, 8, 9, 30, 62, 63, 64]))
            message = _set(message, path, _nest(draw(any_json), depth))
        elif action == "unknown" and isinstance(message, dict):
            message = {**message, draw(st.text(max_size=8)): draw(any_json)}
        elif action == "duplicate" and isinstance(message, dict) and "type" in message:
            message = {**message, "type": draw(st.sampled_from(["welcome", "event", "x", ""]))}
    return message


_TEXT_EDITS = (
    "truncate",
    "insert",
    "surrogate",
    "huge-number",
    "deep",
    "duplicate-key",
    "bom",
    "whitespace",
)


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    """The text of one frame: a (mutated) message, sometimes edited into invalid JSON."""
    message = draw(mutated_message())
    text = json.dumps(message, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    if draw(st.integers(min_value=0, max_value=3)) > 0:
        return text
    edit = draw(st.sampled_from(_TEXT_EDITS))
    at = draw(st.integers(min_value=0, max_value=len(text)))
    if edit == "truncate":
        return text[:at]
    if edit == "insert":
        return text[:at] + draw(st.sampled_from(list('{}[]",:\\\x00 1e-'))) + text[at:]
    if edit == "surrogate":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ude00\\ud83d", "\\ud83d\\ude00"]))
        return text.replace('"', '"' + escape, 2) if '"' in text else text
    if edit == "huge-number":
        number = draw(st.sampled_from(["1e400", "-1e309", "1" + "0" * 400, "1e-400", "-0"]))
        return text.replace(":0", ":" + number, 1).replace(":1", ":" + number, 1)
    if edit == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 500, 981, 5000]))
        return text[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    if edit == "duplicate-key":
        return text[:-1] + ',"type":"ping"}' if len(text) > 2 else text
    if edit == "bom":
        return "\ufeff" + text
    return " \t\n" + text + "\r\n"


_STRAY = '{}[]",:\\0 1-e.\x00\u00e9\ud800'


def cheap_mutants(text: str, rng: random.Random, count: int) -> list[str]:
    """``count`` byte-level edits of ``text`` (delete, insert, swap, repeat a slice): far
    cheaper than a hypothesis draw, so each generated message is also tried broken."""
    out: list[str] = []
    for _ in range(count):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            if not chars:
                break
            at = rng.randrange(len(chars))
            edit = rng.randrange(4)
            if edit == 0:
                del chars[at]
            elif edit == 1:
                chars.insert(at, rng.choice(_STRAY))
            elif edit == 2:
                other = rng.randrange(len(chars))
                chars[at], chars[other] = chars[other], chars[at]
            else:
                end = min(len(chars), at + rng.randint(1, 8))
                chars[at:at] = chars[at:end] * rng.randint(1, 4)
        out.append("".join(chars))
    return out
