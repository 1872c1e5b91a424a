"""Shared fixtures live in tests/fixtures/; each part of the platform registers its own here."""

from __future__ import annotations

import pytest

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

# Fixtures that start a real part (MariaDB, Gunicorn, Kafka, the whole native stack). A test that uses
# one, directly or through another fixture, is marked `services` here, so no file can forget the
# marker; a test that starts a part by hand (Prometheus in test_prom) sets it in its own module.
SERVICE_FIXTURES = frozenset({
    "mariadb", "start_server", "start_server_module", "kafka_broker", "kafka_broker_factory", "native_stack",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
