"""Channel names, patterns, matching and grant containment (spec section 4, UNI-CH).

Everything here is pure. Names and patterns are parsed once into frozen values whose
tokens are tuples, so matching a pattern against a channel (done per event and per
subscription during fan-out) is a handful of tuple comparisons.

No normalization is ever applied: a name is either canonical or rejected. Folding case,
Unicode forms or separators would let two spellings reach one channel, and that is how
tenant isolation breaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import ClassVar

__all__ = [
    "BROADCASTER",
    "MAX_NAME_OCTETS",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_LENGTH",
    "Channel",
    "ChannelError",
    "Namespace",
    "Pattern",
    "contains",
    "matches",
    "parse_channel",
    "parse_pattern",
    "publish_allowed",
    "subscribe_allowed",
]

MAX_NAME_OCTETS = 255
MAX_SEGMENTS = 16
MAX_SEGMENT_LENGTH = 64
BROADCASTER = "broadcaster"

_SEGMENT = re.compile(r"[a-z0-9_-]{1,64}")
_ONE = "*"
_TAIL = ">"


class ChannelError(ValueError):
    """A channel name or pattern is not canonical (wire code ``invalid_channel``)."""

    code: ClassVar[str] = "invalid_channel"


class Namespace(Enum):
    """Which routing domain a name lives in (UNI-CH: tenant, private ``$me``, system ``$sys``)."""

    TENANT = "tenant"
    ME = "$me"
    SYS = "$sys"


_NAMESPACE_TOKENS = {"$me": Namespace.ME, "$sys": Namespace.SYS}


@dataclass(frozen=True, slots=True)
class Channel:
    """A concrete channel name; build it with :func:`parse_channel`.

    ``segments`` excludes the namespace token: ``$me.inbox`` has segments ``("inbox",)``.
    """

    name: str
    namespace: Namespace
    segments: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Pattern:
    """A subscription or grant pattern; build it with :func:`parse_pattern`.

    ``tokens`` excludes the namespace token and may contain ``*`` and a final ``>``.
    ``wildcard`` and ``tail`` are precomputed so matching never rescans the tokens.
    """

    text: str
    namespace: Namespace
    tokens: tuple[str, ...]
    wildcard: bool
    tail: bool

    def __str__(self) -> str:
        return self.text


def _split(text: object, what: str) -> tuple[Namespace, list[str]]:
    """Checks shared by names and patterns: type, size, ASCII, namespace token."""
    if not isinstance(text, str):
        raise ChannelError(f"{what} must be a string")
    if not text:
        raise ChannelError(f"empty {what}")
    if not text.isascii():
        raise ChannelError(f"{what} must be ASCII (no normalization is applied)")
    if len(text) > MAX_NAME_OCTETS:
        raise ChannelError(f"{what} longer than {MAX_NAME_OCTETS} octets")
    tokens = text.split(".")
    namespace = _NAMESPACE_TOKENS.get(tokens[0])
    if namespace is None:
        namespace = Namespace.TENANT
    else:
        del tokens[0]
        if namespace is Namespace.SYS and not tokens:
            raise ChannelError("$sys needs at least one segment")
    if len(tokens) > MAX_SEGMENTS:
        raise ChannelError(f"more than {MAX_SEGMENTS} segments")
    return namespace, tokens


def _bad_segment(token: str) -> ChannelError:
    if not token:
        return ChannelError("empty segment")
    if len(token) > MAX_SEGMENT_LENGTH:
        return ChannelError(f"segment longer than {MAX_SEGMENT_LENGTH} characters")
    return ChannelError(f"invalid segment {token!r}: allowed are a-z 0-9 _ -")


def parse_channel(name: str) -> Channel:
    """Parse a concrete channel name or raise :class:`ChannelError` (UNI-CH grammar).

    Results are immutable and shared: a name parsed again, by another connection or for
    another event, costs a dictionary lookup and no memory.
    """
    if type(name) is str:
        return _cached_channel(name)
    return _parse_channel(name)


def parse_pattern(text: str) -> Pattern:
    """Parse a subscription/grant pattern or raise :class:`ChannelError` (UNI-CH grammar).

    ``*`` is one whole segment, ``>`` one or more trailing segments and only last. Results
    are immutable and shared, as :func:`parse_channel`'s.
    """
    if type(text) is str:
        return _cached_pattern(text)
    return _parse_pattern(text)


_PARSED_CACHE = 16_384
"""Distinct names and patterns kept parsed (a bound: publishers choose channel names)."""


@lru_cache(maxsize=_PARSED_CACHE)
def _cached_channel(name: str) -> Channel:
    return _parse_channel(name)


@lru_cache(maxsize=_PARSED_CACHE)
def _cached_pattern(text: str) -> Pattern:
    return _parse_pattern(text)


def _parse_channel(name: str) -> Channel:
    namespace, segments = _split(name, "channel")
    for segment in segments:
        if _SEGMENT.fullmatch(segment) is None:
            raise _bad_segment(segment)
    return Channel(name, namespace, tuple(segments))


def _parse_pattern(text: str) -> Pattern:
    namespace, tokens = _split(text, "pattern")
    last = len(tokens) - 1
    wildcard = False
    for index, token in enumerate(tokens):
        if token == _ONE:
            wildcard = True
        elif token == _TAIL:
            if index != last:
                raise ChannelError("'>' is allowed only as the last token")
            wildcard = True
        elif _SEGMENT.fullmatch(token) is None:
            raise _bad_segment(token)
    tail = bool(tokens) and tokens[-1] == _TAIL
    return Pattern(text, namespace, tuple(tokens), wildcard, tail)


def matches(pattern: Pattern, channel: Channel) -> bool:
    """Whether ``pattern`` matches ``channel`` (UNI-CH: token-wise, same namespace only).

    A wildcard never matches a namespace token: the namespaces must be equal first.
    """
    if pattern.namespace is not channel.namespace:
        return False
    tokens = pattern.tokens
    segments = channel.segments
    if not pattern.wildcard:
        return tokens == segments
    count = len(tokens)
    if pattern.tail:
        # ">" needs at least one segment of its own.
        if len(segments) < count:
            return False
        count -= 1
    elif len(segments) != count:
        return False
    for index in range(count):
        token = tokens[index]
        if token != _ONE and token != segments[index]:
            return False
    return True


def contains(grant: Pattern, pattern: Pattern) -> bool:
    """Whether every channel matched by ``pattern`` is matched by ``grant`` (UNI-CH).

    Decided token-wise: grant ``>`` takes any non-empty remainder (including ``*`` and
    ``>``), grant ``*`` takes one segment or ``*`` (never ``>``), a grant segment takes
    only the identical segment; otherwise the lengths must be equal.
    """
    if grant.namespace is not pattern.namespace:
        return False
    wanted = pattern.tokens
    for index, token in enumerate(grant.tokens):
        if token == _TAIL:
            return len(wanted) > index
        if index >= len(wanted):
            return False
        other = wanted[index]
        if token == _ONE:
            if other == _TAIL:
                return False
        elif other != token:
            return False
    return len(wanted) == len(grant.tokens)


def subscribe_allowed(grants: Iterable[Pattern], pattern: Pattern) -> bool:
    """Whether a subscription to ``pattern`` is within the subscribe ``grants`` (UNI-CH).

    Own ``$me`` channels need no grant: the server resolves them to the subscriber itself.
    """
    if pattern.namespace is Namespace.ME:
        return True
    return any(contains(grant, pattern) for grant in grants)


def publish_allowed(
    grants: Iterable[Pattern],
    channel: Channel,
    role: str,
    sub: str,
    user: str | None = None,
) -> bool:
    """Whether a publish to ``channel`` passes the grant and role rules (UNI-CH, UNI-PUB).

    ``user`` belongs to ``$me`` channels only (UNI-PUB-7); ``$sys`` needs role
    broadcaster; another user's ``$me`` channel (``user`` set and not the publisher's own
    ``sub``) needs role broadcaster. In every case some publish grant must match the
    channel. The server reports a misplaced ``user`` as ``invalid_message`` during message
    validation, before this check; here it is simply never allowed.
    """
    if user is not None and channel.namespace is not Namespace.ME:
        return False
    if channel.namespace is Namespace.SYS:
        if role != BROADCASTER:
            return False
    elif (
        channel.namespace is Namespace.ME
        and user is not None
        and user != sub
        and role != BROADCASTER
    ):
        return False
    return any(matches(grant, channel) for grant in grants)
