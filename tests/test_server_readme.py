"""The serving examples of the README's quick start and of the docs (docs/serving.md's Serving,
docs/verifiers.md's verifiers), run exactly as written against `t2serve serve` on
127.0.0.1:8000 (a real subprocess, the shipped default config). SIGTERM's drain is tested in
test_server_drain.py, where a request can be held in flight for as long as the test needs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.replicas import start_t2serve
from tests.support import ROOT, doc_section, fenced_blocks, need

pytestmark = pytest.mark.engine

# Where the examples live: (file, `## ` section) as readers find them.
EXAMPLES = (
    (ROOT / "README.md", "Quick start"),
    (ROOT / "docs" / "serving.md", "Serving"),
    (ROOT / "docs" / "verifiers.md", "Verifiers: reward model, judge, step checker"),
)
START_TIMEOUT_S = 600  # a loaded 2-core CI box can take minutes to start vLLM


def serving_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced bash/python block in the sections of EXAMPLES."""
    blocks = [
        block
        for path, heading in EXAMPLES
        for block in fenced_blocks(doc_section(path, heading), ("bash", "python"))
    ]
    return [(lang, code) for lang, code in blocks if "make serve" not in code]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def t2serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    need(
        all((ROOT / "models" / m).is_dir() for m in ("tiny-chain-31k", "tiny-chain-252k")),
        "the shipped grid models",
    )
    assert _port_free(8000), "127.0.0.1:8000 is taken; the README examples need it"
    log_path = tmp_path_factory.mktemp("serve") / "t2serve.log"
    server = start_t2serve(ROOT / "configs" / "default.yaml", 8000, log_path)
    try:
        server.wait_ready(START_TIMEOUT_S)
        yield server.process
    finally:
        server.kill()


def test_the_examples_are_where_readers_look() -> None:
    blocks = serving_blocks()
    assert any(lang == "bash" and "curl" in code for lang, code in blocks)
    assert any('extra_body={"t2"' in code for _, code in blocks)
    assert any("stream=True" in code for _, code in blocks)
    quick_start = fenced_blocks(doc_section(ROOT / "README.md", "Quick start"), ("bash", "python"))
    assert [lang for lang, _ in quick_start] == ["bash", "python"]
    assert any('"verifier": verifier' in code for _, code in blocks)


def test_readme_examples_run_verbatim(t2serve: subprocess.Popen[bytes]) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for lang, code in serving_blocks():
        cmd = (
            ["bash", "-euo", "pipefail", "-c", code]
            if lang == "bash"
            else [sys.executable, "-c", code]
        )
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{lang} block failed:\n{code}\n{done.stdout}\n{done.stderr}"
        assert done.stdout.strip(), f"{lang} block printed nothing:\n{code}"
        if lang == "bash" and "curl" in code:
            reply = json.loads(done.stdout)
            assert (
                reply["choices"][0]["message"]["content"] is not None
                and reply["t2"]["samples"] >= 1
            )
