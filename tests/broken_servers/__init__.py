"""Deliberately broken variants of the reference server (see ``variants.py``)."""
