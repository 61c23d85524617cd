"""Mutation campaigns that judge mutants of the reference package with the live suites."""
