"""The limits every received JSON value obeys (spec section 1.4, UNI-TR-29..31).

JSON's grammar allows values no implementation can hold or send back: nesting deep enough to
exhaust a recursive parser or encoder, numbers beyond binary64, strings holding lone UTF-16
surrogates. One iterative walk refuses them all, so no later stage (schema validation, filter
compilation, encoding an event or a ``welcome``) meets them and fails in its own way.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

__all__ = ["MAX_NESTING", "JsonLimitError", "check_value", "loads"]

MAX_NESTING: Final = 64
"""Deepest accepted nesting: a top-level object has depth 1, each array or object inside +1."""


class JsonLimitError(ValueError):
    """A JSON value outside the protocol's limits (wire code ``invalid_json``)."""


def _reject_constant(name: str) -> Any:
    raise JsonLimitError(f"{name} is not JSON")


def _number_ok(value: int | float) -> bool:
    """UNI-TR-30: the number rounds to a finite binary64 (``1e400`` does not; ``1e-400`` does)."""
    if isinstance(value, float):
        return math.isfinite(value)
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _string_ok(value: str) -> bool:
    """UNI-TR-31: a string is a sequence of Unicode scalar values (no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_value(value: Any, max_nesting: int = MAX_NESTING) -> None:
    """Raise :class:`JsonLimitError` when ``value`` breaks a limit; iterative, never recursive."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _string_ok(item):
                raise JsonLimitError("a string holds a lone surrogate")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int | float):
            if not _number_ok(item):
                raise JsonLimitError("a number is outside the binary64 range")
        elif isinstance(item, dict | list):
            if depth > max_nesting:
                raise JsonLimitError(f"nesting deeper than {max_nesting}")
            if isinstance(item, dict):
                for key, member in item.items():
                    if not _string_ok(key):
                        raise JsonLimitError("a member name holds a lone surrogate")
                    stack.append((member, depth + 1))
            else:
                stack.extend((member, depth + 1) for member in item)


_LONG_DIGITS: Final = re.compile(r"\d{309}")
"""An integer beyond binary64's range has at least 309 digits (10**308 < 1.8e308)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError("a number is outside the binary64 range")
    return value


def _surely_within(text: str) -> bool:
    """Whether the text alone shows the parsed value obeys every limit, so that the walk of
    :func:`check_value` can be skipped: a message on the hot path is parsed and walked by
    the schema check already. Conservative: brackets and digits inside strings count too."""
    return (
        "\\u" not in text  # escapes are the only way to a lone surrogate in a valid str
        and (text.isascii() or _string_ok(text))
        and text.count("[") + text.count("{") <= MAX_NESTING
        and _LONG_DIGITS.search(text) is None
    )


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
"""Built once: ``json.loads`` with these arguments builds a decoder for every message."""


def loads(text: str | bytes) -> Any:
    """Parse ``text`` as JSON within the limits; any failure is :class:`JsonLimitError`.

    ``RecursionError`` counts as too deep: the C scanner gives up long before memory does.
    """
    try:
        if isinstance(text, str):
            value = _DECODER.decode(text)
        else:  # json.loads tells the bytes' UTF encoding apart
            value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise JsonLimitError(str(exc) if isinstance(exc, JsonLimitError) else "not JSON") from None
    if isinstance(text, bytes) or not _surely_within(text):
        check_value(value)
    return value
