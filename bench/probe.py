"""Probes beyond the dev data (issues 21 and 24), in BENCHMARKS.md: nothing is chosen on them.

The dev routing sets' and three dev replay files' source repository (MurongYue/LLM_MoT_cascade)
also holds other prompts and temperatures of the same 369 date questions, and two other tasks
with a cheap model's log, likely close to the held-back sets. This converts them with the
recipe of ../shared/data/routing/README.md (gold from a GPT-4 file, Llama-2's verbatim repeated
draws dropped, the source's extracted answers as recorded answers, programs re-run and lined
back up with their texts where the source dropped failed runs (bench/programs.py), the few-shot
prompt's characters from Evaluation/prompting/) into var/probe/, never into the tree, and
reports at today's defaults:

- five routing sets: date_cot2 (Llama-2, gpt-3.5-turbo, GPT-4), date_pot1 (gpt-3.5-turbo,
  GPT-4; Llama-2's date programs are not in the source's checkout as run), gsm8k_pot2,
  crepe_pot1 and crepe_pot2 (Llama-2, GPT-4), as `bench route_replay` reports the dev sets,
  plus GPT-4 × 1 for scale;
- nine replay files, each as `t2serve replay --data FILE --skip-empty --perms 20 --seed 0
  --policy fixed:all --policy adaptive_consistency:0.95 --policy t2 --policy online:0.0025`.

Run: `python -m bench probe [--source DIR]`, DIR a checkout of the source repository (default
$T2_PROBE_SOURCE, else ../LLM_MoT_cascade beside the project); without one it says so and
skips. Writes var/bench/probe.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.programs import realign, run_programs
from bench.route_replay import goals
from controller.aggregate import get_extractor
from controller.replay import DEFAULT_EXTRACTOR, load_replay, replay
from controller.replay.route_report import ReplayPlan, replay_set
from controller.replay.routing_set import load_routing_set

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "probe"
QUESTIONS = 369
PRICES = {"llama-2-13b": (0.25, 0.25), "gpt-3.5-turbo": (1.5, 2.0), "gpt-4": (30.0, 60.0)}
GOLD_FILE = "GPT4_result/date_cot1.json"


@dataclass(frozen=True)
class ProbeSet:
    """One routing set to convert: its task, its few-shot prompt (module and name under the
    source's Evaluation/prompting/), the file whose `answer` is gold, (model, file) cheapest
    first, GPT-4's greedy file, whether answers are programs to re-run, and its questions."""

    task: str
    prompt_module: str
    prompt: str
    gold_file: str
    models: list[tuple[str, str]]
    greedy: str | None
    programs: bool = False
    questions: int = QUESTIONS


ROUTING_SETS: dict[str, ProbeSet] = {
    "date_cot2": ProbeSet("date_understanding", "date", "date_CoT2_prompting", GOLD_FILE, [
        ("llama-2-13b", "llama2_13B_result/date_cot2.json"),
        ("gpt-3.5-turbo", "GPT3_result/date_cot2.json"),
        ("gpt-4", "GPT4_result/date_cot2.json"),
    ], "GPT4_result/date_greedy_cot2.json"),
    "date_pot1": ProbeSet("date_understanding", "date", "date_PoT1_prompting", GOLD_FILE, [
        ("gpt-3.5-turbo", "GPT3_result/date_pot1.json"),
        ("gpt-4", "GPT4_result/date_pot1.json"),
    ], None),
    # The two other tasks with a cheap model's log in the source: Llama-2's (and GPT-4's)
    # program answers are re-run, as ../shared/data/routing/README.md did for gsm8k_pot1.
    "gsm8k_pot2": ProbeSet("gsm8k", "gsm8k", "gsm_PoT2_prompt", "GPT4_result/gsm_pot2.json", [
        ("llama-2-13b", "llama2_13B_result/gsm_pot2.json"),
        ("gpt-4", "GPT4_result/gsm_pot2.json"),
    ], "GPT4_result/gsm_greedy_pot2.json", programs=True, questions=400),
    "crepe_pot1": ProbeSet("crepe", "crepe", "crepe_pot1_prompt", "GPT4_result/crepe_pot1.json", [
        ("llama-2-13b", "llama2_13B_result/crepe_pot1_V2.json"),
        ("gpt-4", "GPT4_result/crepe_pot1.json"),
    ], "GPT4_result/crepe_greedy_pot1.json", programs=True, questions=400),
    "crepe_pot2": ProbeSet("crepe", "crepe", "crepe_pot2_prompt", "GPT4_result/crepe_pot2.json", [
        ("llama-2-13b", "llama2_13B_result/crepe_pot2_V2.json"),
        ("gpt-4", "GPT4_result/crepe_pot2.json"),
    ], "GPT4_result/crepe_greedy_pot2.json", programs=True, questions=400),
}  # fmt: skip
REPLAY_FILES = [
    *(f"GPT3_result/date_{p}_t={t}.json" for p in ("cot1", "cot2") for t in ("0.4", "0.8")),
    "GPT3_result/date_pot1_t=0.4.json",
    "GPT3_result/date_pot2.json",
    "GPT3_result/date_pot2_t=0.4.json",
    "GPT3_result/date_pot2_t=0.8.json",
    "llama2_13B_result/date_cot2.json",
]
POLICIES = ("fixed:all", "adaptive_consistency:0.95", "t2", "online:0.0025")


def _records(source: Path, rel: str, questions: int = QUESTIONS) -> list[dict[str, Any]]:
    return list(json.loads((source / rel).read_text()))[:questions]


def _recorded(record: dict[str, Any]) -> list[Any]:
    """The source's answer list (some files hold it as the text of a Python list)."""
    results = record["results"]
    return list(ast.literal_eval(results) if isinstance(results, str) else results)


def _distinct_draws(records: list[dict[str, Any]]) -> list[int]:
    """Positions that are not a verbatim copy of an earlier one in every question (the
    source's Llama-2 files repeat draws 0–9 at 10–19)."""
    width = max(len(r["generated"]) for r in records)
    return [
        j
        for j in range(width)
        if not all(
            r["generated"][j] in r["generated"][:j] for r in records if j < len(r["generated"])
        )
    ]


def _answers(records: list[dict[str, Any]], programs: bool) -> tuple[list[list[Any]], str]:
    """Each question's answers, one per text, and a note on how they were lined up."""
    if not programs:
        return [_recorded(r) for r in records], ""
    executed = run_programs([r["generated"] for r in records])
    answers, unfit = [], 0
    for record, ran in zip(records, executed, strict=True):
        fit = realign(ran, _recorded(record))
        unfit += fit is None
        answers.append(ran if fit is None else fit)
    moved = sum(len(_recorded(r)) != len(r["generated"]) for r in records)
    return answers, (
        f"programs re-run: {moved} questions had failed runs dropped; {unfit} "
        "questions' runs differ from the recorded answers (re-run answers kept)"
    )


def _write_replay(
    source: Path,
    rel: str,
    path: Path,
    model: str,
    gold: list[str],
    ids: str,
    programs: bool = False,
) -> tuple[int, str]:
    """One replay file in the shared schema, question ids `ids`-0, -1, …; returns its samples
    per question and a note on its answers."""
    records = _records(source, rel, len(gold))
    keep = _distinct_draws(records)
    answers, note = _answers(records, programs)
    lines = []
    for i, (r, a, g) in enumerate(zip(records, answers, gold, strict=True)):
        samples = [
            {"text": r["generated"][j], "answer": a[j] if j < len(a) else None}
            for j in keep
            if j < len(r["generated"])
        ]  # a question may hold fewer
        lines.append(json.dumps({"id": f"{ids}-{i}", "question": r["question"], "gold": g,
                                 "samples": samples, "model": model, "source": rel}))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return len(keep), note


def _prompt_chars(source: Path, module: str, name: str) -> int:
    """The few-shot prompt's length, read as a string constant (the file is not run)."""
    tree = ast.parse((source / f"Evaluation/prompting/{module}.py").read_text())
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return len(str(node.value.value))
    raise ValueError(f"{name} not in Evaluation/prompting/{module}.py")


def _gold(source: Path, spec: ProbeSet) -> list[str]:
    """Gold as the dev sets write it: numbers as floats' strings ('18.0'), else the text."""
    out = []
    for r in _records(source, spec.gold_file, spec.questions):
        try:
            out.append(str(float(r["answer"])))
        except ValueError:
            out.append(str(r["answer"]).strip())
    return out


def _aligned(source: Path, spec: ProbeSet) -> None:
    """Every model's file asks the gold file's questions in the same order."""
    want = [r["question"] for r in _records(source, spec.gold_file, spec.questions)]
    for _, rel in spec.models:
        got = [r["question"] for r in _records(source, rel, spec.questions)]
        if got != want:
            raise ValueError(f"{rel}: questions differ from {spec.gold_file}'s")


def build(source: Path) -> tuple[list[Path], list[Path]]:
    """Write the probe's routing sets and replay files under OUT; return their paths."""
    sets = []
    for name, spec in ROUTING_SETS.items():
        _aligned(source, spec)
        gold = _gold(source, spec)
        folder = OUT / "routing" / name
        entries, notes = [], []
        for model, rel in spec.models:
            n, note = _write_replay(source, rel, folder / f"{model}.jsonl", model, gold, name,
                                    spec.programs)  # fmt: skip
            notes += [f"{rel}: {note}"] if note else []
            sample, completion = PRICES[model]
            entries.append(
                {
                    "id": model,
                    "file": f"{model}.jsonl",
                    "prompt_per_1m": sample,
                    "completion_per_1m": completion,
                    "samples_per_question": n,
                }
            )
        if spec.greedy is not None:
            _, note = _write_replay(source, spec.greedy, folder / "gpt-4-greedy.jsonl", "gpt-4",
                                    gold, name, spec.programs)  # fmt: skip
            notes += [f"{spec.greedy}: {note}"] if note else []
            entries[-1]["greedy_file"] = "gpt-4-greedy.jsonl"
        manifest = {"task": spec.task, "prompt_style": name.split("_")[1],
                    "questions": len(gold),
                    "prompt_chars": _prompt_chars(source, spec.prompt_module, spec.prompt),
                    "tokens_per_char": 0.25, "models": entries,
                    "source": "MurongYue/LLM_MoT_cascade (bench/probe.py)",
                    "notes": " ".join(notes)}  # fmt: skip
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        sets.append(folder)
    date_gold = _gold(source, ROUTING_SETS["date_cot2"])
    files = []
    for rel in REPLAY_FILES:
        path = OUT / "replay" / (rel.replace("/", "_").replace("=", "").removesuffix(".json")
                                 + ".jsonl")  # fmt: skip
        model = "llama-2-13b" if rel.startswith("llama") else "gpt-3.5-turbo"
        _write_replay(source, rel, path, model, date_gold, path.stem)
        files.append(path)
    return sets, files


def route_probe(folder: Path) -> dict[str, Any]:
    entry = replay_set(load_routing_set(folder), ReplayPlan())
    ref = entry["reference"]
    one = next(s for s in entry["baselines"]["single"] if s["model"] == ref["model"] and
               s["k"] == 1)  # fmt: skip
    return {
        **goals(entry),
        "reference_accuracy": ref["accuracy"],
        "reference_x1": {"accuracy": one["accuracy"], "relative_cost": one["cost"] / ref["cost"]},
        "best_auto": entry["summary"]["auto"]["best"],
    }


def replay_probe(path: Path) -> dict[str, Any]:
    questions, _ = load_replay(path, get_extractor(DEFAULT_EXTRACTOR), skip_empty=True)
    runs = {spec: replay(questions, spec, perms=20, seed=0) for spec in POLICIES}
    majority, ac = runs["fixed:all"], runs["adaptive_consistency:0.95"]
    out: dict[str, Any] = {"majority": majority.accuracy, "ac_samples": ac.mean_samples}
    for spec in POLICIES[2:]:
        r = runs[spec]
        out[r.policy] = {"vs_majority_points": 100 * (r.accuracy - majority.accuracy),
                         "samples_vs_ac": r.mean_samples / ac.mean_samples}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = os.environ.get("T2_PROBE_SOURCE", str(ROOT.parent / "LLM_MoT_cascade"))
    parser.add_argument("--source", type=Path, default=Path(default))
    args = parser.parse_args(argv or [])
    if not (args.source / GOLD_FILE).is_file():
        print(f"no checkout of MurongYue/LLM_MoT_cascade at {args.source}: skipped")
        return
    sets, files = build(args.source)
    report: dict[str, Any] = {"routing": {}, "replay": {}}
    for folder in sets:
        report["routing"][folder.name] = route_probe(folder)
        print(folder.name, json.dumps(report["routing"][folder.name]), flush=True)
    pooled = {spec: [0.0, 0.0] for spec in ("t2", "online")}
    for path in files:
        one = report["replay"][path.stem] = replay_probe(path)
        print(path.stem, json.dumps(one), flush=True)
        questions = len(load_replay(path, get_extractor(DEFAULT_EXTRACTOR), True)[0])
        for spec, key in (("t2", next(k for k in one if k.startswith("t2:"))),
                          ("online", "online:0.0025")):  # fmt: skip
            pooled[spec][0] += one[key]["samples_vs_ac"] * one["ac_samples"] * questions
            pooled[spec][1] += one["ac_samples"] * questions
    report["pooled_samples_vs_ac"] = {k: a / b for k, (a, b) in pooled.items()}
    print("pooled samples vs AC", json.dumps(report["pooled_samples_vs_ac"]))
    out = ROOT / "var" / "bench" / "probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} (the converted data is in {OUT})")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
