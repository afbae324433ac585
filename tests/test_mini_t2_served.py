"""The two served grid models ship consistent artefacts: weights, a replay in the shared
schema, pass@k counts that match it, and a Beta curve fitted to those counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from controller.scaling.curves import load_curves
from models import chain

ROOT = Path(__file__).resolve().parents[1]
SERVED = {"tiny-chain-31k": 30_880, "tiny-chain-252k": 252_384}


@pytest.mark.parametrize(("name", "params"), SERVED.items())
def test_served_grid_model_is_consistent(name: str, params: int) -> None:
    folder = ROOT / "models" / name
    assert (folder / "model.safetensors").stat().st_size < 4 * 2**20  # a few MB at most
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # vLLM CPU head dim
    card = (folder / "README.md").read_text()
    assert f"{params:,} parameters" in card  # named by its size in its card
    rows = [json.loads(line) for line in (folder / "replay.jsonl").read_text().splitlines()]
    questions = chain.eval_questions()
    assert len(rows) == len(questions) == 320
    for row, q in zip(rows, questions, strict=True):
        assert row["question"] == chain.question_text(q) and row["gold"] == chain.gold(q)
        assert len(row["samples"]) == 64
        assert all(s["correct"] == (s["answer"] == row["gold"]) for s in row["samples"])
    with (folder / "passk.csv").open() as f:
        counts = list(csv.DictReader(f))
    assert [int(c["correct"]) for c in counts] == [
        sum(s["correct"] for s in row["samples"]) for row in rows
    ]
    assert {int(c["params"]) for c in counts} == {params}
    measured = json.loads((folder / "measured.json").read_text())
    single = sum(int(c["correct"]) for c in counts) / (64 * 320)
    assert measured["single_sample_accuracy"] == pytest.approx(single, abs=1e-4)
    beta = load_curves(folder / "curves.json").models[name]  # type: ignore[index]
    assert beta.fit().mean == pytest.approx(single, abs=0.05)


def test_the_pair_is_overtrained_small_and_near_chinchilla_large() -> None:
    small = json.loads((ROOT / "models/tiny-chain-31k/training.json").read_text())
    large = json.loads((ROOT / "models/tiny-chain-252k/training.json").read_text())
    assert small["train_tokens"] / small["params"] > 100  # heavily overtrained
    assert 15 < large["train_tokens"] / large["params"] < 25  # about Chinchilla's 20
