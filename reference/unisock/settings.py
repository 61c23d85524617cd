"""Server settings from a TOML file: protocol parameters, auth keys and event types.

A deployment describes itself in one file; every key maps onto a field of
:class:`~unisock.config.ServerConfig` or :class:`~unisock.auth.AuthConfig`, and unknown
keys are refused so that a typo never silently falls back to a default.

Example (non-normative)::

    [server]
    heartbeat_interval_ms = 25000
    allowed_origins = ["https://app.example"]
    coalescing_channels = ["tasks.>"]
    event_types_dir = "events"        # a folder of <event type>.json JSON Schemas
    registry_mode = "strict"

    [auth]
    issuer = "https://id.example"
    public_keys = [{alg = "EdDSA", file = "keys/ed25519.pub.pem"}]
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unisock.auth import AuthConfig
from unisock.config import ServerConfig
from unisock.resources import SCHEMAS_DIR

DEFAULT_EVENT_TYPES_DIR = SCHEMAS_DIR / "v1" / "events"


@dataclass(frozen=True)
class Settings:
    """Everything ``unisock serve`` needs."""

    server: ServerConfig
    auth: AuthConfig


def load_event_types(folder: Path) -> dict[str, dict[str, Any]]:
    """Map event type name -> JSON Schema, one ``<type>.json`` file each (UNI-PUB typed events)."""
    types: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        types[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return types


def load_settings(path: Path | None, *, secret: str | None = None) -> Settings:
    """Read ``path`` (or use defaults) and combine it with an HS256 ``secret``."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        base = path.resolve().parent
    unknown = set(data) - {"server", "auth"}
    if unknown:
        raise ValueError(f"unknown settings sections: {sorted(unknown)}")
    return Settings(
        _server(dict(data.get("server", {})), base), _auth(data.get("auth", {}), base, secret)
    )


def _server(section: dict[str, Any], base: Path) -> ServerConfig:
    folder = section.pop("event_types_dir", None)
    types_dir = base / folder if folder is not None else DEFAULT_EVENT_TYPES_DIR
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    unknown = set(section) - fields
    if unknown:
        raise ValueError(f"unknown [server] settings: {sorted(unknown)}")
    for key in ("features", "coalescing_channels", "allowed_origins"):
        if key in section:
            section[key] = tuple(section[key])
    section.setdefault("event_types", load_event_types(types_dir))
    return ServerConfig(**section)


def _auth(section: dict[str, Any], base: Path, secret: str | None) -> AuthConfig:
    allowed = {"hs256_secret", "public_keys", "issuer", "audience", "leeway_s"}
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"unknown [auth] settings: {sorted(unknown)}")
    keys = [(entry["alg"], base / entry["file"]) for entry in section.get("public_keys", [])]
    return AuthConfig.from_pem_files(
        keys,
        hs256_secret=section.get("hs256_secret", secret),
        issuer=section.get("issuer"),
        audience=section.get("audience"),
        leeway_s=section.get("leeway_s", 0),
    )
