"""The client conformance suite: a harness server drives a client through its test adapter.

``unisock conformance client -- ADAPTER_COMMAND...`` runs it (spec section 16).
"""
