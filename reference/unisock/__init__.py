"""Unisock reference implementation: protocol core, server, client and CLI."""

from unisock._version import PROTOCOL_TOKEN, SPEC_VERSION, WIRE_VERSION, __version__

__all__ = ["PROTOCOL_TOKEN", "SPEC_VERSION", "WIRE_VERSION", "__version__"]
