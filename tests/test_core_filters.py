"""Subscription filter grammar, caps and semantics (UNI-SUB)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unisock.filters import Filter, FilterError, compile_filter, evaluate, json_equal


def _nest(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"exists": "a"}
    for _ in range(depth - 1):
        node = {"not": node}
    return node


VALID_FILTERS: list[Any] = [
    {"eq": ["status", "open"]},
    {"eq": ["$event", "task.updated"]},
    {"eq": ["n", 1]},
    {"eq": ["n", 1.5]},
    {"eq": ["flag", True]},
    {"eq": ["x", None]},
    {"ne": ["status", "done"]},
    {"in": ["priority", [1, 2, "3", None, False]]},
    {"in": ["p", list(range(32))]},
    {"lt": ["n", 3]},
    {"lte": ["n", -1.5]},
    {"gt": ["n", 0]},
    {"gte": ["n", 10**30]},
    {"exists": "assignee"},
    {"exists": "$event"},
    {"and": [{"exists": "a"}]},
    {"or": [{"exists": "a"}] * 16},
    {"not": {"exists": "a"}},
    {"and": [{"eq": ["a", 1]}, {"or": [{"ne": ["b", 2]}, {"not": {"exists": "c"}}]}]},
    {"eq": ["a" + "b" * 31, 1]},
    _nest(8),
    {"and": [{"or": [{"exists": "a"}] * 15}, {"or": [{"exists": "a"}] * 14}]},  # 32 nodes
]

INVALID_FILTERS: list[Any] = [
    None,
    [],
    "eq",
    {},
    {"eq": ["a", 1], "ne": ["a", 2]},
    {"like": ["a", "b"]},
    {"EQ": ["a", 1]},
    {"eq": ["a"]},
    {"eq": ["a", 1, 2]},
    {"eq": "a"},
    {"eq": [1, 1]},
    {"eq": ["", 1]},
    {"eq": ["A", 1]},
    {"eq": ["1a", 1]},
    {"eq": ["a-b", 1]},
    {"eq": ["a" * 33, 1]},
    {"eq": ["$other", 1]},
    {"eq": ["a", [1]]},
    {"eq": ["a", {"b": 1}]},
    {"eq": ["a", float("nan")]},
    {"eq": ["a", float("inf")]},
    {"ne": ["a", []]},
    {"in": ["a", []]},
    {"in": ["a", list(range(33))]},
    {"in": ["a", 1]},
    {"in": ["a", [[1]]]},
    {"lt": ["a", "3"]},
    {"lt": ["a", True]},
    {"gte": ["a", None]},
    {"gt": ["a", float("-inf")]},
    {"exists": 1},
    {"exists": ["a"]},
    {"and": []},
    {"or": [{"exists": "a"}] * 17},
    {"and": {"exists": "a"}},
    {"and": [1]},
    {"not": [{"exists": "a"}]},
    {"not": {}},
    _nest(9),
    {"and": [{"or": [{"exists": "a"}] * 15}, {"or": [{"exists": "a"}] * 15}]},  # 33 nodes
]


@pytest.mark.parametrize("obj", VALID_FILTERS)
def test_filter_grammar_accepts_valid_filter(obj: Any) -> None:
    compiled = compile_filter(obj)
    assert isinstance(compiled, Filter)
    assert compiled.source is obj
    assert 1 <= compiled.nodes <= 32
    assert 1 <= compiled.depth <= 8


@pytest.mark.parametrize("obj", INVALID_FILTERS)
def test_filter_grammar_rejects_invalid_filter(obj: Any) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(obj)
    assert caught.value.code == "invalid_filter"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("obj", "pointer"),
    [
        ([], ""),
        ({"eq": ["a"]}, ""),
        ({"and": [{"exists": "a"}, {"eq": ["a"]}]}, "/and/1"),
        ({"or": [{"exists": "a"}, {"not": {"bogus": 1}}]}, "/or/1/not"),
        ({"not": {"and": [{"exists": 1}]}}, "/not/and/0"),
    ],
)
def test_filter_error_points_at_the_innermost_offending_node(obj: Any, pointer: str) -> None:
    """UNI-SUB-19: the pointer is relative to the filter root, ``""`` for the root itself."""
    with pytest.raises(FilterError) as caught:
        compile_filter(obj)
    assert caught.value.pointer == pointer


def test_filter_counts_every_object_as_a_node_and_the_root_at_depth_one() -> None:
    compiled = compile_filter({"and": [{"eq": ["a", 1]}, {"not": {"exists": "b"}}]})
    assert compiled.nodes == 4
    assert compiled.depth == 3
    assert compile_filter(_nest(8)).depth == 8


def test_filter_caps_follow_the_announced_limits() -> None:
    three = {"and": [{"exists": "a"}, {"exists": "b"}]}
    assert compile_filter(three, max_nodes=3).nodes == 3
    with pytest.raises(FilterError):
        compile_filter(three, max_nodes=2)
    with pytest.raises(FilterError):
        compile_filter(three, max_depth=1)


def test_compiled_filters_compare_by_meaning() -> None:
    assert compile_filter({"eq": ["a", 1]}) == compile_filter({"eq": ["a", 1]})
    assert hash(compile_filter({"eq": ["a", 1]})) == hash(compile_filter({"eq": ["a", 1]}))
    assert compile_filter({"eq": ["a", 1]}) != compile_filter({"ne": ["a", 1]})


def _ev(obj: Any, attrs: dict[str, object], event_type: str = "task.updated") -> bool:
    compiled = compile_filter(obj)
    result = evaluate(compiled, event_type, attrs)
    assert compiled(event_type, attrs) is result
    return result


EVAL_TABLE: list[tuple[Any, dict[str, object], bool]] = [
    ({"eq": ["s", "open"]}, {"s": "open"}, True),
    ({"eq": ["s", "open"]}, {"s": "done"}, False),
    ({"eq": ["s", "open"]}, {}, False),
    ({"eq": ["n", 1]}, {"n": 1.0}, True),
    ({"eq": ["n", 1.0]}, {"n": 1}, True),
    ({"eq": ["n", 1]}, {"n": True}, False),
    ({"eq": ["n", True]}, {"n": 1}, False),
    ({"eq": ["n", False]}, {"n": 0}, False),
    ({"eq": ["n", True]}, {"n": True}, True),
    ({"eq": ["n", False]}, {"n": True}, False),
    ({"eq": ["n", "1"]}, {"n": 1}, False),
    ({"eq": ["n", 1]}, {"n": "1"}, False),
    ({"eq": ["n", None]}, {"n": None}, True),
    ({"eq": ["n", None]}, {}, False),
    ({"eq": ["n", None]}, {"n": 0}, False),
    ({"eq": ["n", 0]}, {"n": None}, False),
    ({"eq": ["n", 1]}, {"n": [1]}, False),
    ({"eq": ["$event", "task.updated"]}, {}, True),
    ({"eq": ["$event", "task.created"]}, {}, False),
    ({"ne": ["s", "open"]}, {"s": "open"}, False),
    ({"ne": ["s", "open"]}, {"s": "done"}, True),
    ({"ne": ["s", "open"]}, {}, True),
    ({"ne": ["n", 1]}, {"n": True}, True),
    ({"in": ["p", [1, 2]]}, {"p": 2.0}, True),
    ({"in": ["p", [1, 2]]}, {"p": 3}, False),
    ({"in": ["p", [1, 2]]}, {"p": True}, False),
    ({"in": ["p", [None]]}, {"p": None}, True),
    ({"in": ["p", [None]]}, {}, False),
    ({"in": ["$event", ["a", "task.updated"]]}, {}, True),
    ({"lt": ["n", 3]}, {"n": 2}, True),
    ({"lt": ["n", 3]}, {"n": 3}, False),
    ({"lte": ["n", 3]}, {"n": 3.0}, True),
    ({"lte": ["n", 3]}, {"n": 3.5}, False),
    ({"gt": ["n", 3]}, {"n": 4}, True),
    ({"gt": ["n", 3]}, {"n": 3}, False),
    ({"gte": ["n", 3]}, {"n": 3}, True),
    ({"gte": ["n", 3]}, {"n": 2.9}, False),
    ({"gt": ["n", 0]}, {"n": True}, False),
    ({"lt": ["n", 5]}, {"n": "1"}, False),
    ({"lt": ["n", 5]}, {"n": None}, False),
    ({"lt": ["n", 5]}, {}, False),
    ({"gte": ["$event", 0]}, {}, False),
    ({"exists": "n"}, {"n": None}, True),
    ({"exists": "n"}, {}, False),
    ({"exists": "$event"}, {}, True),
    ({"and": [{"exists": "a"}, {"exists": "b"}]}, {"a": 1, "b": 2}, True),
    ({"and": [{"exists": "a"}, {"exists": "b"}]}, {"a": 1}, False),
    ({"or": [{"exists": "a"}, {"exists": "b"}]}, {"b": 1}, True),
    ({"or": [{"exists": "a"}, {"exists": "b"}]}, {"c": 1}, False),
    ({"not": {"exists": "a"}}, {}, True),
    ({"not": {"exists": "a"}}, {"a": 1}, False),
    ({"or": [{"exists": "a"}, {"eq": ["$event", "task.updated"]}]}, {}, True),
    ({"not": {"eq": ["$event", "task.updated"]}}, {}, False),
]


@pytest.mark.parametrize(("obj", "attrs", "expected"), EVAL_TABLE)
def test_filter_evaluates_with_json_equality_semantics(
    obj: Any, attrs: dict[str, object], expected: bool
) -> None:
    assert _ev(obj, attrs) is expected


def test_json_equality_keeps_types_apart_except_numbers() -> None:
    assert json_equal(1, 1.0)
    assert json_equal("a", "a")
    assert json_equal(None, None)
    assert not json_equal(True, 1)
    assert not json_equal(1, True)
    assert not json_equal("a", 1)
    assert not json_equal("true", True)
    assert not json_equal("a", None)
    assert not json_equal("a", "b")
    assert not json_equal(None, False)
    assert not json_equal([1], [1])
    assert json_equal(2**53 + 1, float(2**53))  # section 5.5.2: both are the same binary64
    assert not json_equal(2**53 + 2, 2**53)


def test_filter_numbers_compare_as_binary64_not_exactly() -> None:
    """9007199254740993 is 2**53 as binary64: eq matches it and gt does not (section 5.5.2)."""
    attrs = {"n": 2**53 + 1}
    assert evaluate(compile_filter({"eq": ["n", 2**53]}), "t", attrs)
    assert not evaluate(compile_filter({"gt": ["n", 2**53]}), "t", attrs)
    assert evaluate(compile_filter({"gte": ["n", 2**53]}), "t", attrs)
    assert not evaluate(compile_filter({"lt": ["n", 2**53]}), "t", attrs)
    assert evaluate(compile_filter({"in": ["n", [2**53]]}), "t", attrs)


@pytest.mark.parametrize("number", [10**400, -(10**400), float("inf"), float("nan")])
def test_filter_operand_outside_binary64_is_invalid(number: float) -> None:
    for node in ({"eq": ["n", number]}, {"lt": ["n", number]}, {"in": ["n", [number]]}):
        with pytest.raises(FilterError):
            compile_filter(node)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["", "a", "1", "true"]),
)
fields = st.sampled_from(["a", "b", "$event"])
attr_maps = st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars, max_size=3)
event_types = st.sampled_from(["a", "1", "task.updated"])

leaves = st.one_of(
    st.builds(lambda f, v: {"eq": [f, v]}, fields, scalars),
    st.builds(lambda f, v: {"ne": [f, v]}, fields, scalars),
    st.builds(lambda f, vs: {"in": [f, vs]}, fields, st.lists(scalars, min_size=1, max_size=4)),
    st.builds(
        lambda op, f, v: {op: [f, v]},
        st.sampled_from(["lt", "lte", "gt", "gte"]),
        fields,
        st.integers(-3, 3),
    ),
    st.builds(lambda f: {"exists": f}, fields),
)
filters = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)


@given(fields, scalars, attr_maps, event_types)
def test_ne_is_exactly_not_eq(field: str, value: object, attrs: dict[str, object], et: str) -> None:
    eq = evaluate(compile_filter({"eq": [field, value]}), et, attrs)
    ne = evaluate(compile_filter({"ne": [field, value]}), et, attrs)
    assert ne is (not eq)


@given(filters, attr_maps, event_types)
def test_not_negates_and_filters_survive_a_json_round_trip(
    obj: Any, attrs: dict[str, object], et: str
) -> None:
    result = evaluate(compile_filter(obj), et, attrs)
    assert evaluate(compile_filter({"not": obj}), et, attrs) is (not result)
    assert evaluate(compile_filter(json.loads(json.dumps(obj))), et, attrs) is result


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["eq", "ne", "in", "lt", "and", "or", "not", "exists", "a"]),
            inner,
            max_size=2,
        ),
    ),
    max_leaves=12,
)


@given(json_values, attr_maps)
def test_compile_raises_only_filter_error_and_evaluate_never_raises(
    obj: object, attrs: dict[str, object]
) -> None:
    try:
        compiled = compile_filter(obj)
    except FilterError:
        return
    assert evaluate(compiled, "t", attrs) in (True, False)
