"""Fuzzing of the reference server: schema-driven messages, mutations, raw frames."""
