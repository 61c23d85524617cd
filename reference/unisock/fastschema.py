"""A yes/no JSON Schema (2020-12) check compiled into closures, for the per-message path.

``jsonschema`` resolves references and builds error objects on every call, which costs more
than everything else a publish does. Valid messages are the common case and need only a yes:
:func:`compile_schema` turns a schema into one predicate, and the caller asks ``jsonschema``
for the errors only when the predicate says no. A schema using a keyword this module does
not know compiles to ``None``, and the caller keeps using ``jsonschema`` alone, so the answer
is never weaker than the reference validator's (the tests check both agree).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urldefrag, urljoin

__all__ = ["Check", "compile_schema"]

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "$comment",
        "title",
        "description",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)


class _Unsupported(Exception):
    """A keyword or reference this compiler does not handle: use jsonschema instead."""


def compile_schema(
    schema: Any, documents: Mapping[str, Any] | None = None, base: str = ""
) -> Check | None:
    """A predicate equivalent to ``Draft202012Validator(schema).is_valid``, or ``None``.

    ``documents`` maps absolute ``$id`` URIs to schema documents that ``$ref`` may name.
    """
    root = base or (schema.get("$id", "") if isinstance(schema, dict) else "")
    compiler = _Compiler({**(documents or {}), root: schema})
    try:
        return compiler.compile(schema, root)
    except (_Unsupported, re.error, LookupError, TypeError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:  # what json.loads makes, without the bool test
        return True
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES: dict[str, Check] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "integer": _is_integer,
}


def _equal(one: Any, two: Any) -> bool:
    """JSON equality: numbers by value, booleans never equal to numbers."""
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    if _is_number(one) and _is_number(two):
        return bool(one == two)
    if isinstance(one, str) or isinstance(two, str):
        return isinstance(one, str) and isinstance(two, str) and one == two
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_equal(one[k], two[k]) for k in one)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    return one is None and two is None


def _unique(items: list[Any]) -> bool:
    return all(not _equal(items[i], items[j]) for i in range(len(items)) for j in range(i))


# The combinators below run for every message and every nested value: plain loops, as a
# generator handed to all() or any() costs an allocation and a frame switch per item.


def _any(checks: list[Check]) -> Check:
    items = tuple(checks)

    def check(v: Any) -> bool:
        for one in items:  # noqa: SIM110
            if one(v):
                return True
        return False

    return check


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda _v: True
    if len(checks) == 1:
        return checks[0]
    items = tuple(checks)

    def check(v: Any) -> bool:
        for one in items:  # noqa: SIM110
            if not one(v):
                return False
        return True

    return check


class _Compiler:
    def __init__(self, documents: Mapping[str, Any]) -> None:
        self.documents = documents
        self.refs: dict[str, Check] = {}

    def compile(self, schema: Any, base: str) -> Check:
        if schema is True:
            return lambda _v: True
        if schema is False:
            return lambda _v: False
        if not isinstance(schema, dict):
            raise _Unsupported("a schema is an object or a boolean")
        if "$id" in schema and isinstance(schema["$id"], str):
            base = urljoin(base, schema["$id"])
        checks: list[Check] = []
        handled = set(_ANNOTATIONS)
        for keyword, build in _KEYWORDS.items():
            if keyword in schema:
                handled.add(keyword)
                check = build(self, schema, base)
                if check is not None:
                    checks.append(check)
        if {"if", "then", "else"} & schema.keys():
            handled |= {"if", "then", "else"}
            checks.append(self._conditional(schema, base))
        if set(schema) - handled:
            raise _Unsupported(f"keywords {sorted(set(schema) - handled)}")
        return _all(checks)

    # -- references ----------------------------------------------------------------------------

    def ref(self, schema: dict[str, Any], base: str) -> Check:
        target = urljoin(base, schema["$ref"])
        known = self.refs.get(target)
        if known is not None:
            return known
        slot: list[Check] = []

        def deferred(value: Any) -> bool:  # resolves cycles: filters refer to themselves
            return slot[0](value)

        self.refs[target] = deferred
        uri, fragment = urldefrag(target)
        document = self.documents.get(uri)
        if document is None:
            raise _Unsupported(f"unknown reference {target}")
        node = document
        if fragment:
            if not fragment.startswith("/"):
                raise _Unsupported("only JSON-pointer fragments")
            for part in fragment[1:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(node, list):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise _Unsupported(f"unresolvable reference {target}")
        slot.append(self.compile(node, uri))
        return deferred

    def _conditional(self, schema: dict[str, Any], base: str) -> Check:
        if "if" not in schema:
            return lambda _v: True
        test = self.compile(schema["if"], base)
        then = self.compile(schema.get("then", True), base)
        otherwise = self.compile(schema.get("else", True), base)
        return lambda v: then(v) if test(v) else otherwise(v)


_EXACT: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
}
"""The exact Python types of decoded JSON that certainly have each JSON type."""


def _type(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    names = s["type"] if isinstance(s["type"], list) else [s["type"]]
    try:
        tests = [_TYPES[name] for name in names]
        exact = frozenset(t for name in names for t in _EXACT[name])
    except KeyError:
        raise _Unsupported("unknown type") from None
    test = tests[0] if len(tests) == 1 else _any(tests)
    # What json.loads returns is decided by one set lookup; anything else (an integral
    # float for "integer", a subclass) by the full rules.
    return lambda v: type(v) in exact or test(v)


def _enum(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    options = list(s["enum"])
    if all(isinstance(o, str) for o in options):
        strings = frozenset(options)
        return lambda v: isinstance(v, str) and v in strings
    return lambda v: any(_equal(v, o) for o in options)


def _const(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    expected = s["const"]
    return lambda v: _equal(v, expected)


def _properties(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    props = {name: c.compile(sub, base) for name, sub in s["properties"].items()}
    items = tuple(props.items())

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        for name, sub in items:  # noqa: SIM110 - a plain loop: this runs for every message
            if name in v and not sub(v[name]):
                return False
        return True

    return check


def _additional(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    if "patternProperties" in s:
        raise _Unsupported("patternProperties")
    known = frozenset(s.get("properties", {}))
    extra = s["additionalProperties"]
    if extra is False:
        return lambda v: not isinstance(v, dict) or known.issuperset(v)
    sub = c.compile(extra, base)

    def check(v: Any) -> bool:
        if isinstance(v, dict):
            for name, value in v.items():
                if name not in known and not sub(value):
                    return False
        return True

    return check


def _required(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    names = frozenset(s["required"])
    return lambda v: not isinstance(v, dict) or v.keys() >= names


def _min_properties(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    low = s["minProperties"]
    return lambda v: not isinstance(v, dict) or len(v) >= low


def _max_properties(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    high = s["maxProperties"]
    return lambda v: not isinstance(v, dict) or len(v) <= high


def _property_names(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    sub = c.compile(s["propertyNames"], base)

    def check(v: Any) -> bool:
        if isinstance(v, dict):
            for name in v:
                if not sub(name):
                    return False
        return True

    return check


def _prefix_items(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    subs = [c.compile(sub, base) for sub in s["prefixItems"]]
    return lambda v: (
        not isinstance(v, list) or all(sub(item) for sub, item in zip(subs, v, strict=False))
    )


def _items(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    skip = len(s.get("prefixItems", ()))
    sub = c.compile(s["items"], base)

    def check(v: Any) -> bool:
        if isinstance(v, list):
            for item in v[skip:] if skip else v:
                if not sub(item):
                    return False
        return True

    return check


def _contains(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    if "minContains" in s or "maxContains" in s:
        raise _Unsupported("minContains/maxContains")
    sub = c.compile(s["contains"], base)
    return lambda v: not isinstance(v, list) or any(sub(item) for item in v)


def _min_items(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    low = s["minItems"]
    return lambda v: not isinstance(v, list) or len(v) >= low


def _max_items(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    high = s["maxItems"]
    return lambda v: not isinstance(v, list) or len(v) <= high


def _unique_items(c: _Compiler, s: dict[str, Any], base: str) -> Check | None:
    if not s["uniqueItems"]:
        return None
    return lambda v: not isinstance(v, list) or _unique(v)


def _min_length(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    low = s["minLength"]
    return lambda v: not isinstance(v, str) or len(v) >= low


def _max_length(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    high = s["maxLength"]
    return lambda v: not isinstance(v, str) or len(v) <= high


def _pattern(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    search = re.compile(s["pattern"]).search
    return lambda v: not isinstance(v, str) or search(v) is not None


def _minimum(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    low = s["minimum"]
    return lambda v: not _is_number(v) or v >= low


def _maximum(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    high = s["maximum"]
    return lambda v: not _is_number(v) or v <= high


def _exclusive_minimum(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    low = s["exclusiveMinimum"]
    return lambda v: not _is_number(v) or v > low


def _exclusive_maximum(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    high = s["exclusiveMaximum"]
    return lambda v: not _is_number(v) or v < high


def _all_of(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    return _all([c.compile(sub, base) for sub in s["allOf"]])


def _any_of(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    return _any([c.compile(sub, base) for sub in s["anyOf"]])


def _one_of(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    subs = [c.compile(sub, base) for sub in s["oneOf"]]
    return lambda v: sum(1 for sub in subs if sub(v)) == 1


def _not(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    sub = c.compile(s["not"], base)
    return lambda v: not sub(v)


def _ref(c: _Compiler, s: dict[str, Any], base: str) -> Check:
    return c.ref(s, base)


_KEYWORDS: dict[str, Callable[[_Compiler, dict[str, Any], str], Check | None]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "minProperties": _min_properties,
    "maxProperties": _max_properties,
    "propertyNames": _property_names,
    "prefixItems": _prefix_items,
    "items": _items,
    "contains": _contains,
    "minItems": _min_items,
    "maxItems": _max_items,
    "uniqueItems": _unique_items,
    "minLength": _min_length,
    "maxLength": _max_length,
    "pattern": _pattern,
    "minimum": _minimum,
    "maximum": _maximum,
    "exclusiveMinimum": _exclusive_minimum,
    "exclusiveMaximum": _exclusive_maximum,
    "allOf": _all_of,
    "anyOf": _any_of,
    "oneOf": _one_of,
    "not": _not,
    "$ref": _ref,
}
