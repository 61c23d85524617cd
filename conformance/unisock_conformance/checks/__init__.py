"""The server conformance checks: pytest tests, each tagged with the requirement IDs it verifies.

Run them with ``unisock conformance server URL ...`` or
``pytest --pyargs unisock_conformance.checks --unisock-url=URL --unisock-secret=S``.
"""
