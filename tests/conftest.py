"""Session-wide fixtures live in tests/fixtures/*; each area registers its module here."""

pytest_plugins: list[str] = [
    "tests.fixtures.prometheus",
    "tests.fixtures.engine",
    "tests.fixtures.server",
    "tests.fixtures.fixed_length",
    "tests.fixtures.redis",
    "tests.fixtures.stores",
]
