"""Curves in the controller: t2 starts from a model's calibrated prior and Acc(k), and the
server loads them from the model's `curves:` entry."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from controller.aggregate.extract import last_number
from controller.policy.base import Caps
from controller.policy.prior import UNIFORM
from controller.policy.t2 import T2
from controller.replay.data import load_replay
from controller.scaling.served import load_served, split_calibration
from server.config import ConfigError, parse_config
from server.sampling.policies import PolicyBook, policy_book

ROOT = Path(__file__).resolve().parent.parent
CHAIN = "tiny-chain-31k"
CURVES = ROOT / "models" / CHAIN / "curves.json"


def _config(curves: object) -> dict[str, object]:
    return {
        "models": [{"id": CHAIN, "path": f"models/{CHAIN}", "curves": curves}],
        "tenants": [{"id": "t", "api_keys": [{"sha256": "0" * 64}]}],
    }


def test_a_calibrated_model_starts_t2_from_its_prior_and_curve() -> None:
    served = load_served(CURVES, CHAIN)
    book = PolicyBook(curves={CHAIN: served})
    policy = book.make(CHAIN, "t2")
    assert isinstance(policy, T2)
    assert policy.prior == served.leader_prior != UNIFORM
    assert policy.initial_prior == served.leader_prior  # online refits stay anchored there
    assert policy.accuracy(8) == pytest.approx(served.accuracy(8))
    plain = book.make("other-model", "t2")
    assert isinstance(plain, T2) and plain.prior == UNIFORM and plain.curve is None
    assert not isinstance(book.make(CHAIN, "fixed:3"), T2)


def test_upfront_mode_picks_k_on_the_models_measured_curve() -> None:
    served = load_served(CURVES, CHAIN)
    lam = 0.004
    policy = PolicyBook(curves={CHAIN: served}).make(CHAIN, f"t2:lam={lam},upfront")
    assert isinstance(policy, T2)
    ks = np.arange(1, 65)
    best = int(ks[np.argmax([served.accuracy(int(k)) - lam * k for k in ks])])
    assert policy.upfront_k(lam, 64) == best
    uniform = T2(lam, upfront=True)
    assert uniform.upfront_k(lam, 64) != best  # the uniform prior's own curve would pick another


def test_predicted_accuracy_from_curve_and_votes_is_calibrated_on_held_back_questions() -> None:
    """Averaged over held-back questions, t2's predicted accuracy matches the accuracy it gets,
    and per question it separates right answers from wrong ones."""
    served = load_served(CURVES, CHAIN)
    questions, _ = load_replay(ROOT / "models" / CHAIN / "replay.jsonl", last_number)
    rng = random.Random(0)
    book = PolicyBook(curves={CHAIN: served})
    predicted, right = [], []
    for q in questions:
        policy = book.make(CHAIN, "t2:lam=0.002,norefit")
        run = policy.start(Caps(max_samples=16))
        order = rng.sample(range(len(q.samples)), 16)
        answers: list[str | None] = []
        while not (d := run.decide(answers)).stop:
            answers.extend(q.samples[i].answer for i in order[len(answers) : len(answers) + d.wave])
        _, leader = max((answers.count(a), -answers.index(a), a) for a in answers if a)[::2]
        p = run.predicted_accuracy
        assert p is not None and 0.0 <= p <= 1.0
        predicted.append(p)
        right.append(float(leader == q.gold))
    assert np.mean(predicted) == pytest.approx(np.mean(right), abs=0.06)
    hits = np.array(right) == 1
    assert np.mean(np.array(predicted)[hits]) > np.mean(np.array(predicted)[~hits]) + 0.1


def test_the_config_loads_a_models_curves() -> None:
    cfg = parse_config(_config(str(CURVES)))
    assert cfg.models[0].curves == CURVES
    book = policy_book(cfg)
    assert book.curves[CHAIN].leader_prior == load_served(CURVES, CHAIN).leader_prior


def test_a_missing_or_malformed_curves_file_fails_at_load_naming_model_file_field(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(
        ConfigError, match=rf"models\.0.*curves: model '{CHAIN}'.*{missing}.*not found"
    ):
        parse_config(_config(str(missing)))
    doc = json.loads(CURVES.read_text())
    doc["serving"][CHAIN]["leader_prior"]["a"] = -1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(
        ConfigError, match=rf"model '{CHAIN}'.*bad\.json.*serving\.{CHAIN}\.leader_prior\.a"
    ):
        parse_config(_config(str(bad)))
    other = tmp_path / "other.json"
    (other).write_text((ROOT / "models/tiny-arith/curves.json").read_text())
    with pytest.raises(ConfigError, match=rf"serving\.{CHAIN}: missing"):
        parse_config(_config(str(other)))


def test_the_held_back_half_is_not_the_calibration_half() -> None:
    questions, _ = load_replay(ROOT / "models/tiny-arith/replay.jsonl", last_number)
    calibration, held_back = split_calibration(questions)
    assert len(calibration) == len(held_back) == 160
