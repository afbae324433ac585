"""The serving examples of the README's quick start and of the docs (docs/serving.md's Serving,
docs/verifiers.md's verifiers), run exactly as written against the shipped default config served
on 127.0.0.1:8000, where they send their requests.

The app is the one `t2serve serve` builds from configs/default.yaml, served in this process on
the chain-pair engines the suite shares (tests/fixtures/chain_pair.py: the same models and reward
model, started once), with the ledger in a temporary folder. `t2serve serve` itself, as a
subprocess, is tested in test_server_drain.py and test_observability_scrape.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.app import RunningServer, create_app, serve_in_loop
from server.config import load_config
from tests.fixtures.chain_pair import ChainPair
from tests.support import ROOT, doc_section, fenced_blocks

pytestmark = pytest.mark.engine

# Where the examples live: (file, `## ` section) as readers find them.
EXAMPLES = (
    (ROOT / "README.md", "Quick start"),
    (ROOT / "docs" / "serving.md", "Serving"),
    (ROOT / "docs" / "verifiers.md", "Verifiers: reward model, judge, step checker"),
)
PORT = 8000  # where the examples send their requests
BLOCK_TIMEOUT_S = 180


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
async def default_server(
    chain_pair: ChainPair, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    assert _port_free(PORT), f"127.0.0.1:{PORT} is taken; the README examples need it"
    config = load_config(ROOT / "configs" / "default.yaml")
    ledger = tmp_path_factory.mktemp("readme") / "ledger.sqlite"
    config = config.model_copy(
        update={"ledger": config.ledger.model_copy(update={"path": str(ledger)})}
    )
    app = create_app(config, engine=chain_pair.engines, pooling=chain_pair.pooling)
    async with serve_in_loop(app, port=PORT) as server:
        yield server


def test_the_examples_are_where_readers_look() -> None:
    blocks = serving_blocks()
    assert any(lang == "bash" and "curl" in code for lang, code in blocks)
    assert any('extra_body={"t2"' in code for _, code in blocks)
    assert any("stream=True" in code for _, code in blocks)
    quick_start = fenced_blocks(doc_section(ROOT / "README.md", "Quick start"), ("bash", "python"))
    assert [lang for lang, _ in quick_start] == ["bash", "python"]
    assert any('"verifier": verifier' in code for _, code in blocks)


async def test_readme_examples_run_verbatim(default_server: RunningServer) -> None:
    """Each block in its own process (bash, or this interpreter for python), while this
    process's event loop serves its requests."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for lang, code in serving_blocks():
        cmd = (
            ["bash", "-euo", "pipefail", "-c", code]
            if lang == "bash"
            else [sys.executable, "-c", code]
        )
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), BLOCK_TIMEOUT_S)
        stdout, stderr = out.decode(), err.decode()
        assert proc.returncode == 0, f"{lang} block failed:\n{code}\n{stdout}\n{stderr}"
        assert stdout.strip(), f"{lang} block printed nothing:\n{code}"
        if lang == "bash" and "curl" in code:
            reply = json.loads(stdout)
            assert (
                reply["choices"][0]["message"]["content"] is not None
                and reply["t2"]["samples"] >= 1
            )
        if lang == "python" and "stream=True" in code:
            # the example prints the controller's summary from the chunk that carries it (its
            # branch for a chunk without choices and usage never ran: there is none)
            assert "\nt2: {" in stdout and "\nusage: " in stdout, stdout
