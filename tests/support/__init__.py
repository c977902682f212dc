"""Helpers shared by the test suites (importable: ``from tests.support.processes import …``)."""
