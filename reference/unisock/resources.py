"""Locations of the data files shipped with the package (schemas, registries)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMAS_DIR = Path(__file__).resolve().parent / "_schemas"
SCHEMA_BASE_URI = "https://unisock.dev/schemas/"


@cache
def load_json(relative: str) -> Any:
    """Load a JSON file below ``schemas/`` (cached: registries are read-only)."""
    with (SCHEMAS_DIR / relative).open(encoding="utf-8") as handle:
        return json.load(handle)
