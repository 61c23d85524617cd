"""Subscription filters: compile once, evaluate per event (spec section 5, UNI-SUB).

A filter is a small JSON expression over the event type (field ``$event``) and the
event's ``attrs``. :func:`compile_filter` checks the whole grammar and the size caps up
front, so :func:`evaluate` never meets a malformed node and never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeGuard

__all__ = [
    "EVENT_FIELD",
    "MAX_DEPTH",
    "MAX_IN_ITEMS",
    "MAX_LOGIC_ITEMS",
    "MAX_NODES",
    "Filter",
    "FilterError",
    "binary64",
    "compile_filter",
    "evaluate",
    "json_equal",
]

EVENT_FIELD = "$event"
MAX_NODES = 32
MAX_DEPTH = 8
MAX_LOGIC_ITEMS = 16
MAX_IN_ITEMS = 32

_ATTR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_COMPARE_OPS = frozenset({"lt", "lte", "gt", "gte"})

Scalar = str | int | float | bool | None


class FilterError(ValueError):
    """A filter is malformed or too large (wire code ``invalid_filter``).

    ``pointer`` is the JSON Pointer of the offending node relative to the filter's root
    (``""`` for the root itself), so the error can name it (UNI-SUB-19).
    """

    code: ClassVar[str] = "invalid_filter"
    pointer: str | None = None


# Compiled nodes. Frozen and hashable so a compiled filter can be shared and compared.


@dataclass(frozen=True, slots=True)
class _Eq:
    field: str
    value: Scalar
    negate: bool


@dataclass(frozen=True, slots=True)
class _In:
    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class _Compare:
    op: str
    field: str
    value: float


@dataclass(frozen=True, slots=True)
class _Exists:
    field: str


@dataclass(frozen=True, slots=True)
class _All:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Any:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Not:
    item: _Node


_Node = _Eq | _In | _Compare | _Exists | _All | _Any | _Not


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter; build it with :func:`compile_filter`.

    ``source`` keeps the JSON the client sent (for echoing and logs); it takes no part in
    equality so two filters compare by meaning of their compiled tree.
    """

    root: _Node
    nodes: int
    depth: int
    source: Any = field(default=None, compare=False, hash=False, repr=False)

    def __call__(self, event_type: str, attrs: Mapping[str, object]) -> bool:
        return _eval(self.root, event_type, attrs)


def _is_number(value: object) -> TypeGuard[int | float]:
    """JSON numbers: ``int``/``float`` but never ``bool`` (true is not 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    """Numbers the protocol carries: finite binary64 values (UNI-TR-30)."""
    return _is_number(value) and math.isfinite(binary64(value))


def binary64(value: int | float) -> float:
    """The IEEE 754 binary64 value of a JSON number (section 5.5.2), saturating to infinity.

    Python compares ``int`` exactly, so 9007199254740993 would differ from 9007199254740992;
    the spec compares both as the same binary64 value. Received numbers never overflow (the
    parser refuses them, UNI-TR-30); the saturation keeps evaluation total all the same.
    """
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def json_equal(left: object, right: object) -> bool:
    """JSON equality of scalars (UNI-SUB): types must agree, numbers compare as binary64.

    ``1 == 1.0`` holds, ``true != 1`` and ``"1" != 1``.
    """
    if type(left) is str:  # the common case, first: what the last branch decides
        return isinstance(right, str) and left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if _is_number(left):
        return _is_number(right) and binary64(left) == binary64(right)
    if left is None or right is None:
        return left is right
    if isinstance(left, str):
        return isinstance(right, str) and left == right
    return False


class _Compiler:
    """Walks the JSON once, counting nodes and depth as it builds the tree."""

    def __init__(self, max_nodes: int, max_depth: int) -> None:
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.nodes = 0
        self.deepest = 0

    def node(self, obj: object, depth: int, path: str = "") -> _Node:
        try:
            return self._node(obj, depth, path)
        except FilterError as exc:
            if exc.pointer is None:  # the innermost node that failed names itself
                exc.pointer = path
            raise

    def _node(self, obj: object, depth: int, path: str) -> _Node:
        if not isinstance(obj, dict):
            raise FilterError("a filter node must be an object")
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise FilterError(f"filter has more than {self.max_nodes} nodes")
        if depth > self.max_depth:
            raise FilterError(f"filter deeper than {self.max_depth}")
        self.deepest = max(self.deepest, depth)
        if len(obj) != 1:
            raise FilterError("a filter node must have exactly one operator")
        ((op, arg),) = obj.items()
        if op in ("eq", "ne"):
            name, value = _pair(op, arg)
            return _Eq(name, _scalar(op, value), negate=op == "ne")
        if op == "in":
            name, values = _pair(op, arg)
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_IN_ITEMS:
                raise FilterError(f"'in' needs a list of 1..{MAX_IN_ITEMS} scalars")
            return _In(name, tuple(_scalar(op, item) for item in values))
        if op in _COMPARE_OPS:
            name, value = _pair(op, arg)
            if not _is_finite_number(value):
                raise FilterError(f"'{op}' compares with a number")
            return _Compare(op, name, binary64(value))
        if op == "exists":
            return _Exists(_field(op, arg))
        if op in ("and", "or"):
            if not isinstance(arg, list) or not 1 <= len(arg) <= MAX_LOGIC_ITEMS:
                raise FilterError(f"'{op}' needs a list of 1..{MAX_LOGIC_ITEMS} filters")
            items = tuple(
                self.node(item, depth + 1, f"{path}/{op}/{index}") for index, item in enumerate(arg)
            )
            return _All(items) if op == "and" else _Any(items)
        if op == "not":
            return _Not(self.node(arg, depth + 1, f"{path}/not"))
        raise FilterError(f"unknown filter operator {op!r}")


def _field(op: str, name: object) -> str:
    if not isinstance(name, str) or (name != EVENT_FIELD and _ATTR_NAME.fullmatch(name) is None):
        raise FilterError(f"'{op}' needs a field: '$event' or an attribute name")
    return name


def _pair(op: str, arg: object) -> tuple[str, object]:
    if not isinstance(arg, list) or len(arg) != 2:
        raise FilterError(f"'{op}' needs [field, value]")
    return _field(op, arg[0]), arg[1]


def _scalar(op: str, value: object) -> Scalar:
    if value is None or isinstance(value, str | bool):
        return value
    if _is_finite_number(value):
        return value
    raise FilterError(f"'{op}' compares with a scalar (string, number, boolean or null)")


def compile_filter(obj: object, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Filter:
    """Check ``obj`` against the filter grammar and caps (UNI-SUB) and compile it.

    Every object counts as one node; the root is at depth 1.
    Raises :class:`FilterError` on any violation.
    """
    compiler = _Compiler(max_nodes, max_depth)
    root = compiler.node(obj, 1)
    return Filter(root, compiler.nodes, compiler.deepest, obj)


_MISSING = object()


def _lookup(name: str, event_type: str, attrs: Mapping[str, object]) -> object:
    if name == EVENT_FIELD:
        return event_type
    return attrs.get(name, _MISSING)


def _eval(node: _Node, event_type: str, attrs: Mapping[str, object]) -> bool:
    if isinstance(node, _Eq):
        value = _lookup(node.field, event_type, attrs)
        equal = value is not _MISSING and json_equal(value, node.value)
        return equal != node.negate
    if isinstance(node, _In):
        value = _lookup(node.field, event_type, attrs)
        return value is not _MISSING and any(json_equal(value, item) for item in node.values)
    if isinstance(node, _Compare):
        value = _lookup(node.field, event_type, attrs)
        if not _is_number(value):
            return False
        number = binary64(value)  # section 5.5.2: compared as binary64, never exactly
        if node.op == "lt":
            return number < node.value
        if node.op == "lte":
            return number <= node.value
        if node.op == "gt":
            return number > node.value
        return number >= node.value
    if isinstance(node, _Exists):
        return _lookup(node.field, event_type, attrs) is not _MISSING
    if isinstance(node, _All):
        return all(_eval(item, event_type, attrs) for item in node.items)
    if isinstance(node, _Any):
        return any(_eval(item, event_type, attrs) for item in node.items)
    return not _eval(node.item, event_type, attrs)


def evaluate(flt: Filter, event_type: str, attrs: Mapping[str, object]) -> bool:
    """Whether an event with ``event_type`` and ``attrs`` passes ``flt`` (UNI-SUB semantics).

    ``ne`` is ``not eq``, so a missing field satisfies it; ordering operators are false
    unless both sides are numbers.
    """
    return _eval(flt.root, event_type, attrs)
