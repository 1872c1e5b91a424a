"""Shared fixtures live in tests/fixtures/; each part of the platform registers its own here."""

pytest_plugins = [
    "tests.fixtures.datasets",
    "tests.fixtures.models",
    "tests.fixtures.server",
    "tests.fixtures.receivers",
    "tests.fixtures.pipeline",
    "tests.fixtures.stack",
    "tests.fixtures.kafka",
    "tests.fixtures.mariadb",
]
