"""vLLM's own serving benchmark client (`vllm.benchmarks.serve`), unchanged, against the live
server: every request must succeed. Its SSE reader strips each network read, so an SSE comment
that arrives in a read of its own loses its blank-line terminator and swallows every later
event (8 of 8 requests failed at concurrency 8 with `: keep-alive` comments). Waves of 8
samples × 48 tokens outlast the test config's 0.2 s keep-alive interval, so keep-alives are
sent while the benchmark reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.vllm_serve import bench_argv, run_vllm_bench, write_dataset
from tests.fixtures.server import DEMO_KEY, LiveServer
from tests.support import need

pytestmark = [pytest.mark.engine]
PROMPTS = 16


async def test_vllm_bench_serve_runs_unchanged_with_no_failures(
    live_server: LiveServer, tmp_path: Path
) -> None:
    need(__import__("importlib").util.find_spec("pandas") is not None, "pandas (vllm bench)")
    dataset = write_dataset(tmp_path / "heldout.jsonl", 64)
    extra = {"t2": {"policy": "fixed:8"}}
    argv = bench_argv(live_server.base_url, dataset, 8, PROMPTS, tmp_path / "r.json", extra)
    argv[argv.index("--custom-output-len") + 1] = "48"
    argv[argv.index("--header") + 1] = f"Authorization=Bearer {DEMO_KEY}"
    argv.append("--save-detailed")
    result = await asyncio.to_thread(run_vllm_bench, argv, 600)
    assert result["failed"] == 0, json.dumps(result.get("errors", [])[:2])
    assert result["completed"] == PROMPTS
    # Every event reached it: each answer's text, and the usage chunk, sent last (8 samples of
    # 48 tokens each). A swallowed event loses the text or leaves the count to its tokenizer.
    assert all(result["generated_texts"]), result["generated_texts"]
    assert result["output_lens"] == [8 * 48] * PROMPTS, result["output_lens"]
