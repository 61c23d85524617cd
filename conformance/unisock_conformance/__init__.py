"""Unisock conformance suite: vectors, oracle, server and client checks."""

from unisock_conformance.paths import VECTORS_DIR

__all__ = ["VECTORS_DIR"]
