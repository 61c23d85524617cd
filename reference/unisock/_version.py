"""Version numbers: the package, the spec document and the wire protocol are separate (UNI-TR)."""

__version__ = "0.1.0"
SPEC_VERSION = "1.0.0"
WIRE_VERSION = 1
PROTOCOL_TOKEN = f"unisock.v{WIRE_VERSION}"
