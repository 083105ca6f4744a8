"""Shared test helpers: start services, stacks and sandboxes for tests in any package.

A test module imports helpers only from here (or from its own package); see
tests/unit/test_test_layout.py.
"""
