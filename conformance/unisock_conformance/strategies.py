"""Hypothesis strategies for the stateful checks: attributes, filters, targeting.

The vocabularies are deliberately small (three attributes, two event types, a handful of
users) so that generated filters and targets select *some* events and connections, never
all or none: the interesting cases of the delivery predicate (UNI-DEL-11) are the mixed ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "ATTR_NAMES",
    "EVENT_TYPES",
    "attrs",
    "filters",
    "patterns",
    "targeting",
]

EVENT_TYPES = ("model.created", "model.updated")
ATTR_NAMES = ("prio", "kind", "flag")

_values: dict[str, st.SearchStrategy[Any]] = {
    "prio": st.sampled_from([0, 1, 2, 3, 2.0]),
    "kind": st.sampled_from(["a", "b", "A"]),
    "flag": st.sampled_from([True, False, None]),
}


def attrs() -> st.SearchStrategy[dict[str, Any] | None]:
    """``attrs`` of a publish, or None (absent): a subset of the vocabulary."""
    present = st.dictionaries(st.sampled_from(ATTR_NAMES), st.just(None), max_size=len(ATTR_NAMES))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any] | None:
        keys = draw(present)
        if not keys and draw(st.booleans()):
            return None
        return {name: draw(_values[name]) for name in sorted(keys)}

    return build()


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    field = st.sampled_from([*ATTR_NAMES, "$event", "missing"])
    scalar = st.one_of(*(_values.values()), st.sampled_from(EVENT_TYPES), st.just("1"))
    number = st.sampled_from([0, 1, 1.5, 2, 3])
    return st.one_of(
        st.builds(lambda f, v: {"eq": [f, v]}, field, scalar),
        st.builds(lambda f, v: {"ne": [f, v]}, field, scalar),
        st.builds(lambda f, vs: {"in": [f, vs]}, field, st.lists(scalar, min_size=1, max_size=3)),
        st.builds(
            lambda op, f, n: {op: [f, n]},
            st.sampled_from(["lt", "lte", "gt", "gte"]),
            field,
            number,
        ),
        st.builds(lambda f: {"exists": f}, field),
    )


def filters() -> st.SearchStrategy[dict[str, Any]]:
    """Valid filters (UNI-SUB-17) of at most three levels, well under the node limit."""
    return st.recursive(
        _leaf(),
        lambda inner: st.one_of(
            st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda x: {"not": x}, inner),
        ),
        max_leaves=4,
    )


def patterns(prefix: str, leaves: Sequence[str]) -> st.SearchStrategy[str]:
    """Exact, ``*`` and ``>`` patterns over the channels ``prefix.<leaf>[.x]``."""
    exact = [f"{prefix}.{leaf}" for leaf in leaves]
    return st.sampled_from(
        [*exact, f"{prefix}.{leaves[0]}.x", f"{prefix}.*", f"{prefix}.>", f"{prefix}.*.x", ">"]
    )


def targeting(
    users: Sequence[str],
) -> st.SearchStrategy[tuple[tuple[str, ...] | None, tuple[str, ...] | None, bool]]:
    """``(to, exclude, exclude_self)`` of a publish; lists may name unconnected users."""
    names = st.lists(st.sampled_from(list(users)), min_size=1, max_size=2, unique=True).map(tuple)
    return st.tuples(st.none() | names, st.none() | names, st.booleans())
