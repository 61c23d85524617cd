"""Validation of Unisock v1 messages against the published JSON Schemas.

The schemas under ``schemas/v1`` are the wire contract; this module loads them (shipped as
``unisock/_schemas``) into one :class:`referencing.Registry` so ``$ref`` between them resolves
offline, and exposes cached Draft 2020-12 validators. Format checking is off: every wire
constraint is written with ``type``/``pattern``/length keywords, so results do not depend on
which optional format checkers are installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from unisock.fastschema import compile_schema
from unisock.resources import SCHEMAS_DIR

__all__ = [
    "ALL_MESSAGE_TYPES",
    "CLIENT_MESSAGE_TYPES",
    "SCHEMA_BASE",
    "SCHEMA_ROOT",
    "SERVER_MESSAGE_TYPES",
    "format_errors",
    "message_schema_for_type",
    "registry",
    "schema",
    "validate_client_message",
    "validate_server_message",
    "validator_for",
]

SCHEMA_ROOT: Final = SCHEMAS_DIR / "v1"
SCHEMA_BASE: Final = "https://unisock.dev/schemas/v1/"

# The message-type registry of wire version 1; ``ping`` and ``pong`` go both ways.
CLIENT_MESSAGE_TYPES: Final[tuple[str, ...]] = (
    "hello",
    "refresh",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "pong",
)
SERVER_MESSAGE_TYPES: Final[tuple[str, ...]] = (
    "welcome",
    "refreshed",
    "subscribed",
    "unsubscribed",
    "ack",
    "event",
    "gap",
    "error",
    "token_expiring",
    "drain",
    "ping",
    "pong",
)
ALL_MESSAGE_TYPES: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(CLIENT_MESSAGE_TYPES + SERVER_MESSAGE_TYPES)
)

# Folders below schemas/v1 that hold data, not schemas.
_DATA_DIRS: Final = frozenset({"examples"})


def _schema_files() -> Iterator[Path]:
    for path in sorted(SCHEMA_ROOT.rglob("*.json")):
        relative = path.relative_to(SCHEMA_ROOT)
        if relative.parts[0] in _DATA_DIRS:
            continue
        yield path


@cache
def _documents() -> dict[str, dict[str, Any]]:
    """Every schema document keyed by its ``$id`` (registry data files have none)."""
    documents: dict[str, dict[str, Any]] = {}
    for path in _schema_files():
        with path.open(encoding="utf-8") as handle:
            content = json.load(handle)
        if isinstance(content, dict) and isinstance(content.get("$id"), str):
            documents[content["$id"]] = content
    return documents


@cache
def registry() -> Registry[Any]:
    """All v1 schemas, so that ``$ref`` never leaves the package (no network)."""
    resources = [
        (uri, Resource.from_contents(content, default_specification=DRAFT202012))
        for uri, content in _documents().items()
    ]
    return Registry().with_resources(resources)


def _uri(name: str) -> str:
    """Accept ``messages/hello``, ``messages/hello.json`` or a full ``$id``."""
    if name.startswith(SCHEMA_BASE):
        return name
    return SCHEMA_BASE + (name if name.endswith(".json") else f"{name}.json")


def schema(name: str) -> dict[str, Any]:
    """The schema document called ``name`` (e.g. ``client-message``, ``messages/hello``)."""
    uri = _uri(name)
    try:
        return _documents()[uri]
    except KeyError:
        raise KeyError(f"no Unisock schema with $id {uri}") from None


def validator_for(name: str) -> Draft202012Validator:
    """A cached validator for the schema ``name``; ``$ref`` resolves through :func:`registry`."""
    return _validator(_uri(name))


@cache
def _validator(uri: str) -> Draft202012Validator:
    return Draft202012Validator(schema(uri), registry=registry())


def check_for(name: str) -> Callable[[Any], bool]:
    """A fast yes/no for the schema ``name``: same answers as :func:`validator_for`'s
    ``is_valid``; callers ask the validator for the errors only when it says no."""
    return _check(_uri(name))


@cache
def _check(uri: str) -> Callable[[Any], bool]:
    compiled = compile_schema(schema(uri), _documents(), uri)
    return compiled if compiled is not None else _validator(uri).is_valid


def _pointer(error: ValidationError) -> str:
    return "".join(f"/{str(part).replace('~', '~0').replace('/', '~1')}" for part in error.path)


def _reason(error: ValidationError) -> str:
    # A regular expression is no help to a reader; the definition's title says what was expected.
    title = error.schema.get("title") if isinstance(error.schema, dict) else None
    if error.validator == "pattern" and isinstance(title, str):
        return f"{error.instance!r} is not a valid {title}"
    # ``{"not": {"required": [...]}}`` is how the schemas forbid a member in some context.
    forbidden = error.validator_value if error.validator == "not" else None
    if isinstance(forbidden, dict) and list(forbidden) == ["required"]:
        return " and ".join(f"{name!r}" for name in forbidden["required"]) + " is not allowed here"
    return error.message


def format_errors(validator: Draft202012Validator, instance: object) -> list[str]:
    """Readable, sorted, de-duplicated error strings ``<JSON pointer>: <reason>`` (``/`` = root)."""
    lines = {
        f"{_pointer(error) or '/'}: {_reason(error)}" for error in validator.iter_errors(instance)
    }
    return sorted(lines)


def validate_client_message(message: object) -> list[str]:
    """Errors of a message a client sent; an empty list means valid.

    A message of a known type that has errors is answered with ``invalid_message`` (UNI-ERR-13).
    """
    return format_errors(validator_for("client-message"), message)


def validate_server_message(message: object) -> list[str]:
    """Errors of a message a server sent; an empty list means valid."""
    return format_errors(validator_for("server-message"), message)


def message_schema_for_type(message_type: str) -> dict[str, Any] | None:
    """The schema of one message type, or ``None`` for a type not in the v1 registry."""
    if message_type not in ALL_MESSAGE_TYPES:
        return None
    return schema(f"messages/{message_type}")
