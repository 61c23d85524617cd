"""The fan-out index narrows candidates by scope and first literal segment, never too far.

The delivery predicate decides for every candidate; the index must only never leave out a
connection whose pattern matches, and should leave out those that start differently.
"""

from __future__ import annotations

from typing import Any

from unisock.broker import ChannelKey
from unisock.channels import matches, parse_channel, parse_pattern
from unisock.server import _Conn, _Index
from unisock.session import StartSubscribe

PATTERNS = ["a.>", "a.*.c", "b.>", "*.x", ">", "a.b", "$me.notes.>", "$me.>", "$sys.*", "c.*"]
CHANNELS = ["a.b", "a.x", "a.b.c", "b.x", "c.d", "d.x", "$me.notes.1", "$me.other", "$sys.up"]


def _conn() -> _Conn:
    # The index only hashes it: none of its parts is ever used.
    return _Conn(ws=None, core=None, transport=None, protocol=None)  # type: ignore[arg-type]


def _subscribe(index: _Index, conn: _Conn, text: str, owner: str = "u1") -> None:
    pattern = parse_pattern(text)
    namespace = pattern.namespace.value
    scope: tuple[Any, Any, str] = (
        (None, None, namespace)
        if namespace == "$sys"
        else ("t", owner, namespace)
        if namespace == "$me"
        else ("t", None, namespace)
    )
    head = None
    if not pattern.wildcard:
        head = ChannelKey(scope[0], scope[1], text)
    index.add(conn, StartSubscribe("s", pattern, None, (), None, head, scope))


def _key(name: str, owner: str = "u1") -> ChannelKey:
    if name.startswith("$sys"):
        return ChannelKey(None, None, name)
    return ChannelKey("t", owner if name.startswith("$me") else None, name)


def test_every_matching_pattern_is_a_candidate_and_others_mostly_are_not() -> None:
    index = _Index()
    conns = {text: _conn() for text in PATTERNS}
    for text, conn in conns.items():
        _subscribe(index, conn, text)
    for name in CHANNELS:
        found = set(index.candidates(_key(name)))
        wanted = {conns[t] for t in PATTERNS if matches(parse_pattern(t), parse_channel(name))}
        assert wanted <= found, name
        # A candidate that does not match starts with a wildcard or with the same segment.
        first = parse_channel(name).segments[0]
        for text in PATTERNS:
            if conns[text] in found - wanted:
                assert parse_pattern(text).tokens[0] in ("*", ">", first), (name, text)


def test_candidates_do_not_grow_with_patterns_on_other_first_segments() -> None:
    index = _Index()
    for number in range(500):
        _subscribe(index, _conn(), f"room{number}.>")
    mine = _conn()
    _subscribe(index, mine, "news.>")
    assert set(index.candidates(_key("news.today"))) == {mine}


def test_removing_a_subscription_removes_the_candidate() -> None:
    index = _Index()
    conn = _conn()
    _subscribe(index, conn, "a.>")
    _subscribe(index, conn, "a.b")
    index.remove(conn, "a.>")
    assert set(index.candidates(_key("a.b"))) == {conn}
    assert not set(index.candidates(_key("a.c")))
    index.drop(conn)
    assert not index.exact and not index.scoped
