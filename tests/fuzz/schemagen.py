"""Hypothesis strategies generated from the published JSON Schemas (``schemas/v1``).

Every client message type gets a strategy built from its schema, ``$ref`` by ``$ref``, so the
fuzzer follows the wire contract as it is written, not as a test author remembers it. The
keywords the schemas use are covered (type, const, enum, pattern, lengths, bounds, items,
properties, required, propertyNames, minProperties/maxProperties, oneOf/anyOf/allOf);
conditionals (if/then/else, not) are ignored, so a generated value is valid most of the time,
not always: the fuzzer's mutations go much further anyway.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from hypothesis import strategies as st
from referencing import Registry

from unisock.schemas import CLIENT_MESSAGE_TYPES, registry, schema

__all__ = ["any_json", "client_message", "from_schema", "message_strategy"]

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
any_json: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value, shallow and small (``data``, unknown members, mutation material)."""


def _regex(pattern: str) -> st.SearchStrategy[str]:
    # The schemas end patterns with ``$(?!\n)`` so that ``$`` cannot match before a final
    # newline; fullmatch already means that, and hypothesis does not draw lookaheads.
    core = pattern.removesuffix("(?!\\n)").removeprefix("^").removesuffix("$")
    return st.from_regex(re.compile(core), fullmatch=True)


class _Builder:
    """Builds one strategy per schema, resolving ``$ref`` against the schema registry."""

    def __init__(self, reg: Registry[Any]) -> None:
        self.registry = reg
        self.refs: dict[str, st.SearchStrategy[Any]] = {}

    def build(self, node: Any, base: str) -> st.SearchStrategy[Any]:
        if node is True or node == {}:
            return any_json
        if not isinstance(node, dict):
            return st.nothing()
        if "$ref" in node:
            return self._ref(node["$ref"], base)
        base = node.get("$id", base)
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        for key in ("oneOf", "anyOf"):
            if key in node:
                return st.one_of([self.build(branch, base) for branch in node[key]])
        if "allOf" in node and "type" not in node and "properties" not in node:
            return self.build(node["allOf"][0], base)
        kinds = node.get("type")
        if kinds is None:
            kinds = "object" if "properties" in node else None
        if kinds is None:
            return any_json
        if isinstance(kinds, list):
            return st.one_of([self._typed(kind, node, base) for kind in kinds])
        return self._typed(kinds, node, base)

    def _ref(self, ref: str, base: str) -> st.SearchStrategy[Any]:
        resolver = self.registry.resolver(base_uri=base)
        resolved = resolver.lookup(ref)
        key = f"{resolved.resolver._base_uri}#{id(resolved.contents)}"
        if key not in self.refs:
            self.refs[key] = st.deferred(lambda: built)
            built = self.build(resolved.contents, resolved.resolver._base_uri)
            self.refs[key] = built
        return self.refs[key]

    def _typed(self, kind: str, node: dict[str, Any], base: str) -> st.SearchStrategy[Any]:
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            low = node.get("minimum", node.get("exclusiveMinimum", -(2**53 - 1) - 1) + 1)
            return st.integers(min_value=low, max_value=node.get("maximum", 2**53 - 1))
        if kind == "number":
            return st.one_of(
                st.integers(min_value=-(2**53), max_value=2**53),
                st.floats(allow_nan=False, allow_infinity=False),
            )
        if kind == "string":
            if "pattern" in node:
                strategy = _regex(node["pattern"])
            else:
                strategy = st.text(min_size=node.get("minLength", 0), max_size=24)
            low, high = node.get("minLength", 0), node.get("maxLength")
            return strategy.filter(lambda s: len(s) >= low and (high is None or len(s) <= high))
        if kind == "array":
            items = node.get("items", {})
            prefix = [self.build(p, base) for p in node.get("prefixItems", [])]
            rest = st.lists(
                self.build(items, base) if items is not False else st.nothing(),
                min_size=max(0, node.get("minItems", 0) - len(prefix)),
                max_size=min(node.get("maxItems", 6), 6),
            )
            if prefix:
                return st.tuples(*prefix, rest).map(lambda t: [*t[:-1], *t[-1]])
            return rest
        if kind == "object":
            return self._object(node, base)
        return st.nothing()

    def _object(self, node: dict[str, Any], base: str) -> st.SearchStrategy[Any]:
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        fixed = {name: self.build(sub, base) for name, sub in props.items() if name in required}
        optional = {
            name: self.build(sub, base) for name, sub in props.items() if name not in required
        }
        if node.get("maxProperties") == 1 and props:
            # a filter node: exactly one operator with its operand
            return st.one_of(
                [
                    st.builds(lambda value, name=name: {name: value}, self.build(sub, base))
                    for name, sub in props.items()
                ]
            )
        names = node.get("propertyNames")
        extra = node.get("additionalProperties", {})
        if not props and names is not None and extra is not False:
            # a map such as attrs: keys from propertyNames, values from additionalProperties
            keys = self.build(names, base)
            values = self.build(extra, base) if extra is not True else any_json
            return st.dictionaries(keys, values, max_size=min(node.get("maxProperties", 4), 4))
        return st.fixed_dictionaries(fixed, optional=optional)


@cache
def _builder() -> _Builder:
    return _Builder(registry())


@cache
def message_strategy(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Values (mostly valid) of the client message schema ``messages/<kind>``."""
    doc = schema(f"messages/{kind}")
    return _builder().build(doc, doc["$id"])


def from_schema(name: str) -> st.SearchStrategy[Any]:
    """A strategy for any schema of the registry (``defs.json``-relative names work too)."""
    doc = schema(name)
    return _builder().build(doc, doc["$id"])


client_message: st.SearchStrategy[dict[str, Any]] = st.sampled_from(CLIENT_MESSAGE_TYPES).flatmap(
    message_strategy
)
"""Any client message type, drawn from its schema."""
