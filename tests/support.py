"""Helpers shared by the tests: the CI rule that a missing dependency is a failure, not a skip."""

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def doc_section(path: Path, heading: str) -> str:
    """The text under the `## heading` line of a Markdown file, up to the next `## ` heading:
    the tests run the examples of the README and the docs pages from where readers see them."""
    text = path.read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"{path.relative_to(ROOT)} has no '## {heading}' section"
    return match.group(1)


def fenced_blocks(text: str, languages: tuple[str, ...]) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in `text` written in one of `languages`."""
    pattern = rf"^```({'|'.join(languages)})\n(.*?)^```"
    return [(lang, code) for lang, code in re.findall(pattern, text, flags=re.M | re.S)]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
