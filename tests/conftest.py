"""Shared fixtures: the real Kafka broker and Redis server (started by scripts/services.sh)."""

pytest_plugins = ["tests.service_fixtures"]
