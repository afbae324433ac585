"""CLI command groups, registered by server.cli."""
