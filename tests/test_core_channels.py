"""Channel grammar, matching, grant containment and publish rules (UNI-CH)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unisock.channels import (
    Channel,
    ChannelError,
    Namespace,
    Pattern,
    contains,
    matches,
    parse_channel,
    parse_pattern,
    publish_allowed,
    subscribe_allowed,
)

ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")

VALID_NAMES = [
    "a",
    "tasks.42",
    "tenant-x.room_1.a-b",
    "0",
    "-",
    "_",
    "$me",
    "$me.inbox",
    "$sys.maint",
    "$sys.a.b.c",
    "a" * 64,
    ".".join(["a"] * 16),
    "$me." + ".".join(["a"] * 16),
    "$sys." + ".".join(["a"] * 16),
    ".".join(["abcdefghijklmno"] * 16),  # 16 * 15 + 15 = 255 octets
]

INVALID_NAMES = [
    "",
    "Tasks",
    "tasks.A",
    "tâches",
    "\uff54asks",  # full-width latin letter t
    "tasks\uff0e42",  # full-width full stop
    "tasks\u200b",  # zero-width space
    "tasks 42",
    " tasks",
    "tasks\n",
    "tasks\t1",
    ".tasks",
    "tasks.",
    "tasks..42",
    ".",
    "tasks/42",
    "tasks\\42",
    "tasks:42",
    "tasks%2e42",
    "tasks#1",
    "ta$ks",
    "tasks.$me",
    "$sys",
    "$sys.",
    "$me.",
    "$Me",
    "$ME.inbox",
    "$other.x",
    "$",
    "$me.$sys.x",
    "*",
    "tasks.*",
    "tasks.>",
    ">",
    "ab*",
    "a" * 65,
    ".".join(["a"] * 17),
    "$me." + ".".join(["a"] * 17),
    ".".join(["abcdefghijklmnop"] * 16),  # 16 segments, 271 octets
    "a." * 127 + "ab",  # 256 octets of valid-looking characters
]

VALID_PATTERNS = [
    "tasks.42",
    "tasks.*",
    "tasks.>",
    "*",
    ">",
    "*.*",
    "*.>",
    "a.*.c.>",
    "$me",
    "$me.>",
    "$me.*",
    "$me.inbox",
    "$sys.>",
    "$sys.*",
    "$sys.maint",
    ".".join(["*"] * 16),
    "$sys." + ".".join(["*"] * 15) + ".>",
]

INVALID_PATTERNS = [
    "",
    "$sys",
    "tasks.>.x",
    ">.x",
    "> ",
    "tasks.**",
    "tasks.a*",
    "tasks.*b",
    "tasks.>>",
    "tasks..*",
    "tasks.",
    "Tasks.*",
    "$ME.>",
    "$*.x",
    "*.$me",
    ".".join(["*"] * 17),
    "tasks.\uff0a",  # full-width asterisk
    "tasks.42/x",
    "a" * 65,
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_channel_grammar_accepts_canonical_name(name: str) -> None:
    channel = parse_channel(name)
    assert channel.name == name
    assert str(channel) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_channel_grammar_rejects_non_canonical_name(name: str) -> None:
    with pytest.raises(ChannelError) as caught:
        parse_channel(name)
    assert caught.value.code == "invalid_channel"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)


@pytest.mark.parametrize("value", [None, 42, b"tasks", ["tasks"]])
def test_channel_grammar_rejects_non_string(value: object) -> None:
    with pytest.raises(ChannelError):
        parse_channel(value)  # type: ignore[arg-type]
    with pytest.raises(ChannelError):
        parse_pattern(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", VALID_PATTERNS + VALID_NAMES)
def test_pattern_grammar_accepts_canonical_pattern(text: str) -> None:
    pattern = parse_pattern(text)
    assert pattern.text == text
    assert str(pattern) == text


@pytest.mark.parametrize(
    "text",
    INVALID_PATTERNS + [n for n in INVALID_NAMES if n not in ("*", "tasks.*", "tasks.>", ">")],
)
def test_pattern_grammar_rejects_non_canonical_pattern(text: str) -> None:
    with pytest.raises(ChannelError):
        parse_pattern(text)


def test_namespace_token_is_split_from_segments() -> None:
    assert parse_channel("$me") == Channel("$me", Namespace.ME, ())
    assert parse_channel("$me.a.b") == Channel("$me.a.b", Namespace.ME, ("a", "b"))
    assert parse_channel("$sys.m") == Channel("$sys.m", Namespace.SYS, ("m",))
    assert parse_channel("x.y") == Channel("x.y", Namespace.TENANT, ("x", "y"))
    pattern = parse_pattern("$sys.a.>")
    assert pattern == Pattern("$sys.a.>", Namespace.SYS, ("a", ">"), wildcard=True, tail=True)
    literal = parse_pattern("a.b")
    assert literal == Pattern("a.b", Namespace.TENANT, ("a", "b"), wildcard=False, tail=False)
    assert not literal.wildcard
    assert not literal.tail
    assert parse_pattern("a.*").wildcard
    assert not parse_pattern("a.*").tail


MATCH_TABLE = [
    ("tasks.42", "tasks.42", True),
    ("tasks.42", "tasks.43", False),
    ("tasks.42", "tasks.42.x", False),
    ("tasks.*", "tasks.42", True),
    ("tasks.*", "tasks", False),
    ("tasks.*", "tasks.42.x", False),
    ("tasks.>", "tasks.42", True),
    ("tasks.>", "tasks.42.x.y", True),
    ("tasks.>", "tasks", False),
    ("*", "tasks", True),
    ("*", "tasks.42", False),
    (">", "tasks", True),
    (">", "tasks.42.x", True),
    ("*.42", "tasks.42", True),
    ("*.42", "tasks.43", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
    # A wildcard never matches a namespace token.
    (">", "$me", False),
    (">", "$me.inbox", False),
    ("*", "$me", False),
    (">", "$sys.maint", False),
    ("*.maint", "$sys.maint", False),
    ("$me", "$me", True),
    ("$me", "$me.inbox", False),
    ("$me.>", "$me", False),
    ("$me.>", "$me.inbox", True),
    ("$me.>", "$me.a.b", True),
    ("$me.*", "$me.inbox", True),
    ("$me.inbox", "$me.inbox", True),
    ("$me.inbox", "$me.other", False),
    ("$sys.>", "$sys.maint", True),
    ("$sys.>", "$me.maint", False),
    ("$me.>", "$sys.maint", False),
    ("$sys.maint", "maint", False),
    ("maint", "$sys.maint", False),
]


@pytest.mark.parametrize(("pattern", "channel", "expected"), MATCH_TABLE)
def test_pattern_matches_channel_token_wise(pattern: str, channel: str, expected: bool) -> None:
    assert matches(parse_pattern(pattern), parse_channel(channel)) is expected


CONTAINS_TABLE = [
    ("tasks.>", "tasks.42", True),
    ("tasks.>", "tasks.*", True),
    ("tasks.>", "tasks.>", True),
    ("tasks.>", "tasks.*.>", True),
    ("tasks.>", "tasks", False),
    ("tasks.>", ">", False),
    ("tasks.>", "other.>", False),
    (">", ">", True),
    (">", "*", True),
    (">", "a.b.c", True),
    (">", "$me.x", False),
    (">", "$sys.x", False),
    ("tasks.*", "tasks.42", True),
    ("tasks.*", "tasks.*", True),
    ("tasks.*", "tasks.>", False),
    ("tasks.*", "tasks.42.x", False),
    ("tasks.*", "tasks", False),
    ("*", ">", False),
    ("tasks.42", "tasks.42", True),
    ("tasks.42", "tasks.*", False),
    ("tasks.42", "tasks.>", False),
    ("tasks.42", "tasks.43", False),
    ("tasks.42", "tasks.42.x", False),
    ("tasks.42.x", "tasks.42", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.*.c", True),
    ("a.*.c", "a.*.d", False),
    ("a.*.>", "a.b.c", True),
    ("a.*.>", "a.b", False),
    ("$me", "$me", True),
    ("$me", "$me.x", False),
    ("$me.>", "$me", False),
    ("$me.>", "$me.x.y", True),
    ("$sys.>", "$sys.maint", True),
    ("$sys.>", "$sys.>", True),
    ("$sys.maint", "$sys.*", False),
    ("$sys.>", "$me.x", False),
]


@pytest.mark.parametrize(("grant", "pattern", "expected"), CONTAINS_TABLE)
def test_grant_contains_pattern_token_wise(grant: str, pattern: str, expected: bool) -> None:
    assert contains(parse_pattern(grant), parse_pattern(pattern)) is expected


def _small_patterns() -> list[Pattern]:
    found: list[Pattern] = []
    for namespace in ("", "$me.", "$sys."):
        for length in range(1, 4):
            for tokens in itertools.product(("a", "b", "*", ">"), repeat=length):
                text = namespace + ".".join(tokens)
                if ">" not in tokens[:-1]:
                    found.append(parse_pattern(text))
    found.append(parse_pattern("$me"))
    return found


def _small_channels() -> list[Channel]:
    found = [parse_channel("$me")]
    for namespace in ("", "$me.", "$sys."):
        for length in range(1, 5):
            for segments in itertools.product(("a", "b", "x"), repeat=length):
                found.append(parse_channel(namespace + ".".join(segments)))
    return found


def test_contains_agrees_with_semantic_containment_on_a_complete_small_universe() -> None:
    # Patterns of up to 3 tokens over {a, b, *, >}; channels of up to 4 segments over
    # {a, b, x} ("x" is a segment no pattern names). On this universe "every channel
    # matched by P is matched by G" is decided exactly, so contains() must agree both ways.
    patterns = _small_patterns()
    channels = _small_channels()
    matched = {p: frozenset(c for c in channels if matches(p, c)) for p in patterns}
    for grant in patterns:
        for pattern in patterns:
            semantic = matched[pattern] <= matched[grant]
            assert contains(grant, pattern) is semantic, (grant.text, pattern.text)


segments = st.text(alphabet=sorted(ALLOWED), min_size=1, max_size=8)
small_tokens = st.sampled_from(["a", "b", "c", "*", ">"])
small_segments = st.sampled_from(["a", "b", "c", "d"])
namespaces = st.sampled_from(["", "$me.", "$sys."])


@st.composite
def pattern_texts(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(small_tokens, min_size=1, max_size=5))
    tokens = [t for t in tokens[:-1] if t != ">"] + tokens[-1:]
    if not tokens:
        tokens = ["a"]
    return draw(namespaces) + ".".join(tokens)


@st.composite
def channel_texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(small_segments, min_size=1, max_size=6))
    return draw(namespaces) + ".".join(parts)


@given(draw_grant=pattern_texts(), draw_pattern=pattern_texts(), draw_channel=channel_texts())
def test_contained_pattern_only_matches_channels_the_grant_matches(
    draw_grant: str, draw_pattern: str, draw_channel: str
) -> None:
    grant = parse_pattern(draw_grant)
    pattern = parse_pattern(draw_pattern)
    channel = parse_channel(draw_channel)
    if contains(grant, pattern) and matches(pattern, channel):
        assert matches(grant, channel)


@given(st.lists(segments, min_size=1, max_size=16), namespaces)
def test_generated_canonical_name_round_trips(parts: list[str], namespace: str) -> None:
    name = namespace + ".".join(parts)
    channel = parse_channel(name)
    assert channel.name == name
    assert channel.segments == tuple(parts)
    assert matches(parse_pattern(name), channel)
    assert contains(parse_pattern(name), parse_pattern(name))


@given(st.text(max_size=40))
def test_any_accepted_name_is_lowercase_ascii_without_empty_segments(text: str) -> None:
    try:
        channel = parse_channel(text)
    except ChannelError:
        return
    assert text.isascii()
    assert text == text.lower()
    assert all(segment and set(segment) <= ALLOWED for segment in channel.segments)
    assert len(text.encode()) <= 255


@given(st.text(alphabet="abAB.*>$_-é ", max_size=20))
def test_any_accepted_pattern_is_lowercase_ascii_with_whole_token_wildcards(text: str) -> None:
    try:
        pattern = parse_pattern(text)
    except ChannelError:
        return
    assert text.isascii()
    assert text == text.lower()
    for index, token in enumerate(pattern.tokens):
        assert token in ("*", ">") or set(token) <= ALLOWED
        assert token != ">" or index == len(pattern.tokens) - 1


@given(pattern_texts())
def test_pattern_contains_itself(text: str) -> None:
    pattern = parse_pattern(text)
    assert contains(pattern, pattern)


def _grants(*texts: str) -> tuple[Pattern, ...]:
    return tuple(parse_pattern(text) for text in texts)


def test_subscribe_needs_a_containing_grant() -> None:
    grants = _grants("tasks.>", "$sys.maint")
    assert subscribe_allowed(grants, parse_pattern("tasks.*"))
    assert not subscribe_allowed(grants, parse_pattern("tasks"))
    assert not subscribe_allowed(grants, parse_pattern(">"))
    assert subscribe_allowed(grants, parse_pattern("$sys.maint"))
    assert not subscribe_allowed(grants, parse_pattern("$sys.>"))
    assert not subscribe_allowed((), parse_pattern("$sys.maint"))


def test_subscribe_to_own_private_channels_needs_no_grant() -> None:
    assert subscribe_allowed((), parse_pattern("$me"))
    assert subscribe_allowed((), parse_pattern("$me.>"))


PUBLISH_TABLE = [
    # grants, channel, role, sub, user, expected
    (("tasks.>",), "tasks.42", "user", "alice", None, True),
    (("tasks.>",), "tasks", "user", "alice", None, False),
    (("tasks.*",), "tasks.42.x", "user", "alice", None, False),
    ((), "tasks.42", "broadcaster", "svc", None, False),
    (("tasks.42",), "tasks.42", "broadcaster", "svc", None, True),
    # $sys: role broadcaster AND a grant.
    (("$sys.>",), "$sys.maint", "broadcaster", "svc", None, True),
    (("$sys.>",), "$sys.maint", "user", "alice", None, False),
    (("$sys.>",), "$sys.maint", "broadcaster", "svc", "bob", False),
    (("tasks.>",), "$sys.maint", "broadcaster", "svc", None, False),
    ((">",), "$sys.maint", "broadcaster", "svc", None, False),
    # $me: a grant in the $me namespace; another user's channel needs broadcaster.
    (("$me.>",), "$me.inbox", "user", "alice", None, True),
    (("$me.>",), "$me.inbox", "user", "alice", "alice", True),
    (("$me.>",), "$me.inbox", "user", "alice", "bob", False),
    (("$me.>",), "$me.inbox", "broadcaster", "svc", "bob", True),
    (("$me.>",), "$me", "broadcaster", "svc", "bob", False),
    (("$me",), "$me", "broadcaster", "svc", "bob", True),
    ((), "$me.inbox", "user", "alice", None, False),
    ((">",), "$me.inbox", "user", "alice", None, False),
    (("tasks.>",), "$me.inbox", "broadcaster", "svc", "bob", False),
]


@pytest.mark.parametrize(("grants", "channel", "role", "sub", "user", "expected"), PUBLISH_TABLE)
def test_publish_follows_grant_and_role_rules(
    grants: tuple[str, ...],
    channel: str,
    role: str,
    sub: str,
    user: str | None,
    expected: bool,
) -> None:
    allowed = publish_allowed(_grants(*grants), parse_channel(channel), role, sub, user)
    assert allowed is expected
