"""A routing set larger than the dev sets (issue 21's "one set in under 2 minutes"): its time
and peak memory at the replay's defaults.

The set is date_cot1's rows resampled (seeded, with replacement) to `--questions` questions
with new ids, every model's file alike, written under var/bench/route-large/ (never into the
shared data). The replay is `t2serve replay --route SET --json`, run as its own process so its
time and peak memory are the command's.

`python -m bench route_replay_large [--questions N] [--seed S]` writes
var/bench/route_replay_large.json; BENCHMARKS.md runs it on two commits, alternating.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "routing" / "date_cot1"
OUT = ROOT / "var" / "bench"


def build(source: Path, questions: int, seed: int, out: Path) -> Path:
    """`source`'s rows drawn `questions` times (the same rows in every model's file)."""
    manifest = json.loads((source / "manifest.json").read_text())
    files = [m["file"] for m in manifest["models"]]
    files += [m["greedy_file"] for m in manifest["models"] if m.get("greedy_file")]
    rows = {f: (source / f).read_text().splitlines() for f in files}
    rng = random.Random(seed)
    pick = [rng.randrange(len(rows[files[0]])) for _ in range(questions)]
    folder = out / f"{source.name}_x{questions}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        lines = []
        for i, j in enumerate(pick):
            row = json.loads(rows[f][j])
            row["id"] = f"{source.name}-x{i}"
            lines.append(json.dumps(row))
        (folder / f).write_text("\n".join(lines) + "\n")
    (folder / "manifest.json").write_text(json.dumps({**manifest, "questions": questions}))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=2096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv or [])
    folder = build(SOURCE, args.questions, args.seed, OUT / "route-large")
    command = [sys.executable, "-c", "from cli.app import app; app()",
               "replay", "--route", str(folder), "--json"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = {"set": folder.name, "questions": args.questions, "seconds": round(seconds, 1),
              "peak_mb": round(peak_mb)}  # fmt: skip
    (OUT / "route_replay_large.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
