"""Serving curves (controller/scaling/served.py): the exact Acc(k), the leader prior, the file."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from controller.aggregate.extract import last_number
from controller.aggregate.vote import Candidate, aggregate
from controller.policy.prior import UNIFORM
from controller.replay.data import ReplayQuestion, ReplaySample, load_replay
from controller.scaling.curves import load_curves
from controller.scaling.estimators import maj_curve
from controller.scaling.served import (
    ServedCurvesError,
    fit_served,
    fit_served_replay,
    leader_accuracy_table,
    load_served,
    split_calibration,
    with_served,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("tiny-chain-31k", "tiny-chain-252k", "tiny-arith")


def _vote_by_enumeration(samples: list[str | None], gold: str) -> list[float]:
    """maj@k by brute force: every ordered k-draw, voted by the server's own aggregate()."""
    out = []
    for k in range(1, len(samples) + 1):
        hits, total = Fraction(0), 0
        for draw in itertools.permutations(range(len(samples)), k):
            total += 1
            hits += aggregate([Candidate(samples[i]) for i in draw]).answer == gold
        out.append(float(hits / total))
    return out


@pytest.mark.parametrize(
    "samples",
    [
        ["a", "a", "b", "b", "c", None, None],
        ["a", "b", "b", "c", "c", "d", None],
        ["a", "a", "a", "b", "c", "c"],
        [None, None, "a", "b"],
    ],
)
def test_the_curve_is_the_servers_vote_over_every_draw(samples: list[str | None]) -> None:
    counts = {x: samples.count(x) for x in set(samples) if x is not None}
    others = [v for key, v in counts.items() if key != "a"]
    exact = maj_curve(counts.get("a", 0), others, len(samples), abstained=samples.count(None))
    assert exact == pytest.approx(_vote_by_enumeration(samples, "a"), abs=1e-12)


def _question(i: int, answers: list[str | None], gold: str = "1") -> ReplayQuestion:
    samples = tuple(ReplaySample(a, a == gold, 3.0) for a in answers)
    return ReplayQuestion(f"q{i}", gold, samples, i + 1)


def test_the_leader_table_counts_the_servers_vote_after_every_draw() -> None:
    """The (vectorised) table against the server's aggregate() over every prefix of the same
    seeded draw orders (one rng permutation per question and order), cell by cell."""
    rows: list[list[str | None]] = [
        ["1", "2", "2", "1", None, "3"], ["2", "1", None, None], ["4", "4", "5", "1", "1"],
        [None, None, None, "1"], ["1", "1", "1", "2"],
    ]  # fmt: skip
    questions = [_question(i, a) for i, a in enumerate(rows)]
    curve = [0.5, 0.4, 0.6, 0.7]
    orders, seed = 5, 3
    hits, seen = np.zeros((5, 5)), np.zeros((5, 5))
    rng = np.random.default_rng(seed)
    for q in questions:
        for _ in range(orders):
            drawn = [q.samples[int(i)].answer for i in rng.permutation(len(q.samples))[:4]]
            for k in range(1, 5):
                vote = aggregate([Candidate(a) for a in drawn[:k]]).answer
                if vote is not None:
                    v = drawn[:k].count(vote)
                    seen[k, v] += 1
                    hits[k, v] += vote == q.gold
    expected = [[(hits[k, v] + curve[k - 1]) / (seen[k, v] + 1) for v in range(1, k + 1)]
                for k in range(1, 5)]  # fmt: skip
    assert leader_accuracy_table(questions, curve, orders=orders, seed=seed) == expected


def test_fit_served_measures_acc_and_fits_a_leading_prior(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    questions = []
    for i in range(60):
        p = rng.beta(3, 1)
        answers = ["1" if rng.random() < p else str(rng.integers(2, 5)) for _ in range(16)]
        questions.append(_question(i, list(answers)))
    fit = fit_served(questions, model_id="m", params=1e3, calibration="synthetic")
    acc = fit.serving.accuracy
    assert len(acc) == 16
    assert acc[0] == pytest.approx(acc[1])  # a 2-vote tie goes to the first draw: Acc(2) = Acc(1)
    single = np.mean([sum(s.answer == "1" for s in q.samples) / 16 for q in questions])
    assert acc[0] == pytest.approx(single)  # Acc(1) is the single-sample accuracy
    assert acc[-1] > acc[0] + 0.1
    prior = fit.serving.leader_prior
    assert prior.a > 2 * prior.b  # leaders lead: far from the uniform Beta(1, 1)
    path = tmp_path / "curves.json"
    with_served(None, fit).save(path)
    served = load_served(path, "m")
    assert served.accuracy(16) == pytest.approx(acc[-1])
    assert served.accuracy(1000) == pytest.approx(acc[-1])  # held beyond K
    assert served.accuracy(3.5) == pytest.approx((acc[2] + acc[3]) / 2)
    assert served.leader_prior != UNIFORM
    assert served.params == 1e3


def test_questions_without_gold_are_refused_naming_the_line() -> None:
    q = ReplayQuestion("q7", None, (ReplaySample("1", True, 1.0),), 7)
    with pytest.raises(ServedCurvesError, match=r"<data>:7: question 'q7' has no gold"):
        fit_served([q], model_id="m", params=1.0)


@pytest.mark.parametrize("model", SHIPPED)
def test_shipped_models_carry_serving_curves_from_questions_not_held_back(model: str) -> None:
    """The chain models are calibrated on chain's 256 validation questions (`t2serve calibrate`
    output in models/<model>/calibration/), tiny-arith on the even half of its replay; the
    held-back evaluation questions never enter a fit."""
    path = ROOT / "models" / model / "curves.json"
    served = load_served(path, model)
    training = json.loads((ROOT / "models" / model / "training.json").read_text())
    assert served.params == training["params"]
    assert served.leader_prior.a > served.leader_prior.b
    assert len(served.leader_table) == 32
    replay = ROOT / "models" / model / "replay.jsonl"
    held_back, _ = load_replay(replay, last_number)
    if model == "tiny-arith":
        calibration, held_back = split_calibration(held_back)
        refit = fit_served_replay(
            replay, model_id=model, params=served.params, tokens=served.tokens
        )
    else:
        source = ROOT / "models" / model / "calibration" / "replay.jsonl"
        calibration, _ = load_replay(source, last_number)
        refit = fit_served(calibration, model_id=model, params=served.params)
    assert served.questions == len(calibration) and served.k_max == 64
    assert {q.id for q in calibration}.isdisjoint({q.id for q in held_back})
    assert tuple(refit.serving.accuracy) == pytest.approx(served.curve)
    doc = load_curves(path)
    assert doc.serving is not None
    info = doc.serving[model].data
    assert info is not None and info.rows == len(calibration)


def test_chain_calibration_questions_are_not_the_held_back_ones() -> None:
    from models import chain

    val = {chain.question_text(q) for q in chain.val_questions()}
    held = {chain.question_text(q) for q in chain.eval_questions()}
    assert val.isdisjoint(held)
    for model in ("tiny-chain-31k", "tiny-chain-252k"):
        rows = (ROOT / "models" / model / "calibration" / "replay.jsonl").read_text().splitlines()
        assert {json.loads(r)["question"] for r in rows} == val


def test_files_without_a_serving_block_still_load() -> None:
    for name in ("curves-loss-pass.json", "curves-accuracy-maj.json"):
        assert load_curves(ROOT / "models" / "mini-t2" / name).serving is None


def _write(path: Path, doc: object) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_load_errors_name_model_file_and_field(tmp_path: Path) -> None:
    good = json.loads((ROOT / "models" / "tiny-arith" / "curves.json").read_text())
    missing = tmp_path / "nope.json"
    with pytest.raises(ServedCurvesError, match=rf"'tiny-arith'.*{missing}.*not found"):
        load_served(missing, "tiny-arith")
    broken = _write(tmp_path / "broken.json", "{not json")
    with pytest.raises(ServedCurvesError, match=rf"'tiny-arith'.*{broken}"):
        load_served(broken, "tiny-arith")
    with pytest.raises(ServedCurvesError, match=r"'other'.*serving\.other: missing"):
        load_served(ROOT / "models" / "tiny-arith" / "curves.json", "other")
    bad = json.loads(json.dumps(good))
    bad["serving"]["tiny-arith"]["accuracy"][3] = 1.5
    path = _write(tmp_path / "bad.json", bad)
    with pytest.raises(ServedCurvesError, match=r"'tiny-arith'.*bad\.json.*serving\.tiny-arith"):
        load_served(path, "tiny-arith")
    bad = json.loads(json.dumps(good))
    del bad["serving"]["tiny-arith"]["leader_prior"]["b"]
    path = _write(tmp_path / "bad2.json", bad)
    with pytest.raises(ServedCurvesError, match=r"serving\.tiny-arith\.leader_prior\.b"):
        load_served(path, "tiny-arith")
    orphan = json.loads(json.dumps(good))
    orphan["serving"]["ghost"] = orphan["serving"]["tiny-arith"]
    path = _write(tmp_path / "orphan.json", orphan)
    with pytest.raises(ServedCurvesError, match=r"serving\.ghost needs its difficulty Beta"):
        load_served(path, "ghost")
