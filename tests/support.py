"""Helpers shared by the tests: the CI rule that a missing dependency is a failure, not a skip."""
import os
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(available: bool, what: str) -> None:
    """Skip locally when `what` is missing, but fail in CI: a skipped real-component test hides
    a gap."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true", pytrace=False)
    pytest.skip(f"{what} not available")


def billed(body: dict[str, Any]) -> int:
    """The tokens a completion's answer was billed for (and counts against tpm): `t2`'s billed
    figures, not `usage` (which counts the whole prompt once, cache hits included)."""
    t2 = body["t2"]
    return int(t2["billed_prompt_tokens"]) + int(t2["billed_completion_tokens"])
