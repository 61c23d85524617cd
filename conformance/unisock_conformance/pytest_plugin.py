"""pytest plugin entry point for running the Unisock conformance suite from pytest."""
