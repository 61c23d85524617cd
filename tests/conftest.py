"""Hypothesis settings for the project's own tests.

CI must be deterministic and must not fail because a loaded machine ran one example slowly:
fixed seeds (derandomize) and no per-example wall-clock deadline. Campaigns that want fresh
randomness (tests/fuzz) set their own settings explicitly.
"""

from hypothesis import settings

settings.register_profile("unisock-tests", deadline=None, derandomize=True, database=None)
settings.load_profile("unisock-tests")
