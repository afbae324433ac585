"""`t2serve calibrate` (cli/calibrate.py): sampling through the real engine, resume, bad input,
an engine that fails mid-way."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.calibrate import EngineStopped, Settings, calibrate
from cli.calibrate_files import CalibrateError, Question, load_questions
from controller.aggregate.extract import last_number
from controller.replay.data import load_replay
from controller.scaling.served import load_served
from server.engine.base import Prompt, Sample, SampleEngine, SamplingParams
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.engine import MODEL_DIR, engine_available
from tests.support import need

ROOT = Path(__file__).resolve().parent.parent


def _question_file(path: Path, count: int) -> Path:
    """The first `count` held-back tiny-arith questions, as a question file (id, question, gold)."""
    rows = [json.loads(line) for line in (ROOT / "models/tiny-arith/replay.jsonl").open()][:count]
    path.write_text(
        "".join(
            json.dumps({"id": r["id"], "question": r["question"], "gold": r["gold"]}) + "\n"
            for r in rows
        )
    )
    return path


def _settings(samples: int = 4) -> Settings:
    return Settings(model_id="tiny-arith", samples=samples, max_tokens=24, seed=7, concurrency=3)


@pytest.mark.engine
async def test_calibrates_through_the_real_engine(engine: SampleEngine, tmp_path: Path) -> None:
    data = _question_file(tmp_path / "q.jsonl", 6)
    questions, _ = load_questions(data)
    out = tmp_path / "out"
    outcome = await calibrate(
        engine, questions, out, _settings(), params=252384.0, tokens=566400.0, source=data
    )
    assert outcome.recorded == 6 and outcome.resumed == 0
    replay, _ = load_replay(out / "replay.jsonl", last_number)
    assert [q.id for q in replay] == [q.id for q in questions]
    assert all(len(q.samples) == 4 for q in replay)
    with (out / "passk.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["model", "params", "tokens", "problem", "samples", "correct"]
    assert [int(r["correct"]) for r in rows] == [
        sum(s.answer == q.gold for s in q.samples) for q in replay
    ]
    served = load_served(out / "curves.json", "tiny-arith")
    assert served.k_max == 4 and served.questions == 6 and served.params == 252384.0
    single = sum(int(r["correct"]) for r in rows) / 24
    assert served.accuracy(1) == pytest.approx(single)
    assert not list(out.glob(".*"))  # no journal, no temp file left behind
    # the model answers its task: the shipped model is right far more often than chance
    assert single > 0.15


@dataclass
class DiesAfter(ScriptedEngine):
    """A scripted engine whose `sample` fails from its `after`-th request on."""

    after: int = 2

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        if len(self.calls) >= self.after:
            self.dead = True
        async for s in super().sample(prompt, n, params, request_id):
            yield s


def _qs(n: int) -> list[Question]:
    return [Question(f"q{i}", (("user", f"Q: {i}+1=?"),), str(i + 1), i + 1) for i in range(n)]


async def test_an_engine_failing_mid_way_keeps_what_was_recorded_and_resumes(
    tmp_path: Path,
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text("whatever the questions came from\n")
    questions = _qs(5)
    settings = Settings(model_id="m", samples=3, max_tokens=8, concurrency=1)
    failing = DiesAfter(script=cycle("A: 1", "A: 2"), after=2)
    with pytest.raises(EngineStopped, match=r"question 'q2' \(line 3\)"):
        await calibrate(
            failing, questions, tmp_path, settings, params=1.0, tokens=None, source=data
        )
    journal = tmp_path / ".calibrate-m.journal.jsonl"
    kept = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert [r["id"] for r in kept] == ["q0", "q1"]
    assert not (tmp_path / "replay.jsonl").exists()  # no final file from a failed run
    with journal.open("a") as fh:
        fh.write('{"id": "q2", "samp')  # a crash tore the last line
    healthy = ScriptedEngine(script=cycle("A: 1"))
    outcome = await calibrate(
        healthy, questions, tmp_path, settings, params=1.0, tokens=None, source=data
    )
    assert outcome.resumed == 2
    assert len(healthy.calls) == 3  # only q2, q3, q4 were sampled again
    replay, _ = load_replay(tmp_path / "replay.jsonl", last_number)
    assert [q.id for q in replay] == ["q0", "q1", "q2", "q3", "q4"]
    assert not journal.exists()


async def test_a_journal_from_other_settings_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text("x\n")
    with pytest.raises(EngineStopped):
        await calibrate(
            DiesAfter(after=1),
            _qs(3),
            tmp_path,
            Settings(model_id="m", samples=3, max_tokens=8, concurrency=1),
            params=1.0,
            tokens=None,
            source=data,
        )
    with pytest.raises(CalibrateError, match=r"recorded with samples=3, this run has 5"):
        await calibrate(
            ScriptedEngine(),
            _qs(3),
            tmp_path,
            Settings(model_id="m", samples=5, max_tokens=8, concurrency=1),
            params=1.0,
            tokens=None,
            source=data,
        )


BAD_LINES = [
    ('{"id": "a", "question": "Q: 1+1=?"}', r":2: no `gold` answer"),
    ('{"id": "a", "question": "Q: 1+1=?", "gold": null}', r":2: no `gold` answer"),
    ("{not json", r":2: not valid JSON"),
    ('{"id": "a", "gold": "2"}', r":2: needs a `question` string or a `messages` list"),
    ('{"id": "ok", "question": "Q: 2+2=?", "gold": "4"}', r":2: duplicate id 'ok'"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_lines_are_errors_naming_the_line_unless_skipped(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "q.jsonl"
    good = '{"id": "ok", "question": "Q: 1+1=?", "gold": "2"}'
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(CalibrateError, match=message):
        load_questions(path)
    questions, skipped = load_questions(path, skip_bad=True)
    assert [q.id for q in questions] == ["ok"] and len(skipped) == 1
    assert str(path) in skipped[0]


def test_the_command_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "Q: 1+1=?"}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.app",
            "calibrate",
            "--config",
            "configs/default.yaml",
            "--model",
            "tiny-arith",
            "--data",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2, out.stderr
    assert f"{path}:1: no `gold` answer" in out.stderr


@pytest.mark.engine
def test_the_command_samples_through_the_configured_engine(tmp_path: Path) -> None:
    """End to end: `t2serve calibrate` starts the model's engine from the config itself."""
    need(engine_available(), f"the shipped model at {MODEL_DIR} and vllm")
    config = tmp_path / "c.yaml"
    config.write_text(
        "models:\n  - id: tiny-arith\n    path: models/tiny-arith\n"
        "engine:\n  kv_cache_memory_bytes: 134217728\n  max_num_seqs: 32\n"
        "tenants:\n  - id: t\n    api_keys: [{sha256: '" + "0" * 64 + "'}]\n"
    )
    data = _question_file(tmp_path / "q.jsonl", 3)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "cli.app",
        "calibrate",
        "--config",
        str(config),
        "--model",
        "tiny-arith",
        "--data",
        str(data),
        "--out",
        str(out),
        "--samples",
        "4",
        "--json",
    ]
    run = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["questions"] == 3 and report["samples_per_question"] == 4
    assert load_served(out / "curves.json", "tiny-arith").k_max == 4
