"""Locations of the suite's data files: the vectors and the spec's requirement registry."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
VECTORS_DIR = _HERE / "_vectors"
SPEC_DIR = _HERE / "_spec"
