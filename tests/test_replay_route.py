"""`t2serve replay --route`: routing-set loading and bad input, dollar arithmetic, cross-fitting,
the baselines' arithmetic, and one end-to-end run on the real date_cot1 set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.route_plot import x_scale
from controller.replay import route as route_module
from controller.replay.route import (
    Draws,
    FoldCalibrations,
    Prices,
    RouteSettings,
    calibrate_member,
    calibrate_route,
    folds,
    replay_routes,
)
from controller.replay.route_baselines import Votes, single, vote_cascade
from controller.replay.route_report import ReplayPlan, replay_set
from controller.replay.routing_set import RoutingSet, RoutingSetError, load_routing_set
from controller.routing import FittedMember

REAL = Path(__file__).resolve().parents[2] / "shared/data/routing/date_cot1"
runner = CliRunner()

PRICES = {"weak": (1.0, 2.0), "strong": (10.0, 20.0)}
LIGHT_SHRINK = 0.5
"""For the toy sets, whose every state is seen on many questions: the tests here are about the
router's decisions in those states, not about the shrinkage knob (controller.routing.SHRINK)."""


def _row(i: int, answers: list[str | None], gold: str = "7") -> dict[str, Any]:
    return {"id": f"q{i}", "question": f"question {i}?", "gold": gold,
            "samples": [{"text": "x" * 40, "answer": a} for a in answers]}  # fmt: skip


def write_set(
    root: Path,
    weak: list[list[str | None]],
    strong: list[list[str | None]],
    manifest: dict[str, Any] | None = None,
) -> Path:
    """A two-model set: `weak`/`strong` answers per question, gold 7, 40-char texts."""
    root.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "task": "toy", "questions": len(weak), "prompt_chars": 100, "tokens_per_char": 0.25,
        "models": [
            {"id": m, "file": f"{m}.jsonl", "prompt_per_1m": p, "completion_per_1m": c}
            for m, (p, c) in PRICES.items()
        ],
    }  # fmt: skip
    doc.update(manifest or {})
    (root / "manifest.json").write_text(json.dumps(doc))
    for model, rows in (("weak", weak), ("strong", strong)):
        lines = [json.dumps(_row(i, a)) for i, a in enumerate(rows)]
        (root / f"{model}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def toy(root: Path, n: int = 40) -> Path:
    """Weak is right (4 of 4) on even questions and split on odd ones; strong always right."""
    sure: list[str | None] = ["7"] * 4
    split: list[str | None] = ["7", "8", "9", None]
    weak = [sure if i % 2 == 0 else split for i in range(n)]
    strong: list[list[str | None]] = [["7", "7"] for _ in range(n)]
    return write_set(root, weak, strong)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["replay", *args])
    return result.exit_code, result.stdout, result.stderr


# -- loading and bad input ------------------------------------------------------------------------


def test_costs_are_the_ledgers_prompt_once_per_call_and_completion_per_sample(
    tmp_path: Path,
) -> None:
    rs = load_routing_set(toy(tmp_path / "s"))
    weak = rs.model("weak")
    prompt_tokens = (100 + len("question 0?")) * 0.25
    assert weak.call_cost[0] == pytest.approx(prompt_tokens * 1.0 / 1e6)
    assert weak.sample_cost[0, 0] == pytest.approx(40 * 0.25 * 2.0 / 1e6)
    assert rs.model("strong").sample_cost[0, 1] == pytest.approx(40 * 0.25 * 20.0 / 1e6)
    assert weak.codes[1].tolist() == [0, 1, 2, -1]  # gold is code 0, a null abstains


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        ("id", "strong.jsonl:3: id"),
        ("question", "strong.jsonl:3: question"),
        ("gold", "strong.jsonl:3: gold"),
        ("price", "manifest.json: models.1 (strong): prompt_per_1m"),
        ("file", "strong.jsonl: model file missing"),
        ("json", "strong.jsonl:3: not valid JSON"),
        ("twice", "manifest.json: models.1: id: 'weak' is listed twice"),
        ("text", "strong.jsonl:3: samples: each needs a `text`"),
        ("text: 5", "strong.jsonl:3: sample 0 `text` must be a string or null, not a number"),
        (
            "answer: [7]",
            "strong.jsonl:3: sample 1 `answer` must be a string, a number, true/false or null",
        ),
        ("free", "manifest.json: every model costs 0"),
    ],
)
def test_a_misaligned_or_unpriced_set_exits_2_with_one_line(
    tmp_path: Path, breakage: str, where: str
) -> None:
    root = toy(tmp_path / "s", n=5)
    strong = root / "strong.jsonl"
    rows = [json.loads(line) for line in strong.read_text().splitlines()]
    if breakage in ("id", "question", "gold"):
        rows[2][breakage] = "something else"
        strong.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif breakage == "json":
        lines = strong.read_text().splitlines()
        lines[2] = lines[2][:-1]
        strong.write_text("\n".join(lines) + "\n")
    elif breakage == "text":
        del rows[2]["samples"][0]["text"]
        strong.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif breakage == "text: 5":
        rows[2]["samples"][0]["text"] = 5
        strong.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif breakage == "answer: [7]":
        rows[2]["samples"][1]["answer"] = [7]
        strong.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif breakage == "twice":
        doc = json.loads((root / "manifest.json").read_text())
        doc["models"][1]["id"] = "weak"
        (root / "manifest.json").write_text(json.dumps(doc))
    elif breakage == "price":
        doc = json.loads((root / "manifest.json").read_text())
        del doc["models"][1]["prompt_per_1m"]
        (root / "manifest.json").write_text(json.dumps(doc))
    elif breakage == "free":
        doc = json.loads((root / "manifest.json").read_text())
        for entry in doc["models"]:
            entry["prompt_per_1m"] = entry["completion_per_1m"] = 0
        (root / "manifest.json").write_text(json.dumps(doc))
    else:
        strong.unlink()
    code, out, err = invoke("--route", str(root), "--perms", "1", "--json")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert where in err


def test_the_extractor_is_named_by_the_manifest_or_the_caller(tmp_path: Path) -> None:
    root = write_set(tmp_path / "d", [["Today is 5/1/2021."]], [["05/01/2021"]],
                     {"extractor": "date"})  # fmt: skip
    for row in ("weak", "strong"):
        text = (root / f"{row}.jsonl").read_text().replace('"7"', '"05/01/2021"')
        (root / f"{row}.jsonl").write_text(text)
    assert load_routing_set(root).model("weak").codes.tolist() == [[0]]
    assert load_routing_set(root, "exact").model("weak").codes.tolist() == [[1]]
    with pytest.raises(RoutingSetError, match="extractor"):
        load_routing_set(root, "no_such_extractor")


# -- cross-fitting, caps, baselines ---------------------------------------------------------------


def test_folds_cover_every_question_once_and_are_seeded() -> None:
    parts = folds(11, 3, seed=4)
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert [p.tolist() for p in parts] == [p.tolist() for p in folds(11, 3, seed=4)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in folds(11, 3, seed=5)]


def test_a_route_is_calibrated_only_on_the_other_folds(tmp_path: Path) -> None:
    rs = load_routing_set(toy(tmp_path / "s"))
    rows = folds(rs.questions, 2, seed=0)
    route = calibrate_route(rs, rows[1], ("weak", "strong"), seed=0)
    calibrated = set(route.candidate("weak").stats.keys)
    assert calibrated == {rs.ids[i] for i in rows[1]}
    assert not calibrated & {rs.ids[i] for i in rows[0]}


def test_each_model_is_calibrated_once_per_fold_for_all_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full route and every single-model t2 route share one fit per model and fold (refits
    were most of a large set's replay time), and a shared fit is the one a route alone makes."""
    rs = load_routing_set(toy(tmp_path / "s"))
    calls: list[str] = []

    def counted(rs: RoutingSet, rows: Any, model: str, *args: Any) -> FittedMember:
        calls.append(model)
        return calibrate_member(rs, rows, model, *args)

    monkeypatch.setattr(route_module, "calibrate_member", counted)
    replay_set(rs, ReplayPlan(perms=1, folds=2, lams=(0.0, 1.0)))
    assert sorted(calls) == ["strong", "strong", "weak", "weak"]
    rows = folds(rs.questions, 2, seed=0)
    shared = FoldCalibrations(rs, rows).route(0, RouteSettings(("strong",)))
    alone = calibrate_route(rs, rows[1], ("strong",), seed=0)
    assert np.array_equal(shared.candidates[0].stats.right, alone.candidates[0].stats.right)


def test_routes_never_draw_more_than_recorded_and_escalate_the_unsure(tmp_path: Path) -> None:
    rs = load_routing_set(toy(tmp_path / "s"))
    draws = Draws.make(rs, perms=3, seed=0)
    rows = folds(rs.questions, 2, seed=0)
    prices = Prices.measure(rs, rows[0], ("weak", "strong"))
    assert prices.caps == {"weak": 4, "strong": 2}
    strong_calls = rs.model("strong").call_cost + rs.model("strong").sample_cost.sum(axis=1)
    lam = 0.05 / float(strong_calls.mean())  # the strong model's call is worth 5 points
    # light shrinkage: the toy's 20 calibration questions per state must speak for themselves
    settings = RouteSettings(("weak", "strong"), shrink=LIGHT_SHRINK, pool=False)
    points = replay_routes(rs, draws, rows, settings, [lam],
                           ("cascade",))  # fmt: skip
    (p,) = points
    assert p.correct.mean() == pytest.approx(1.0)
    weak_all = rs.model("weak").call_cost + rs.model("weak").sample_cost.sum(axis=1)
    # never more than every recorded sample of both models
    assert np.all(p.cost <= strong_calls + weak_all + 1e-12)
    # the unsure (odd) questions end on the strong model, the sure ones on the weak
    assert p.last_model["strong"][1::2].mean() == pytest.approx(1.0)
    assert p.last_model["weak"][0::2].mean() == pytest.approx(1.0)


def test_vote_cascade_accepts_the_weak_majority_at_tau_and_pays_only_what_it_draws(
    tmp_path: Path,
) -> None:
    rs = load_routing_set(toy(tmp_path / "s", n=4))
    draws = Draws.make(rs, perms=2, seed=1)
    weak, strong = Votes.of(rs, draws, "weak"), Votes.of(rs, draws, "strong")
    w, s = rs.model("weak"), rs.model("strong")
    cascade = vote_cascade([weak, strong], 4, 1.0)
    weak_cost = w.call_cost + w.sample_cost.sum(axis=1)
    strong_cost = s.call_cost + s.sample_cost.sum(axis=1)
    expected = np.where(np.arange(4) % 2 == 0, weak_cost, weak_cost + strong_cost)
    assert cascade.cost == pytest.approx(expected)
    assert cascade.accuracy == pytest.approx(1.0)
    codes = draws.codes(rs, "weak")  # a 7/8/9/None tie goes to the answer drawn first
    first = np.array([[next(c for c in row if c >= 0) for row in q] for q in codes])
    expected_right = np.where(np.arange(4) % 2 == 0, 1.0, (first == 0).mean(axis=0))
    assert single(weak, 4).correct == pytest.approx(expected_right)
    oracle = vote_cascade([weak, strong], 1, 1.0, oracle=True)
    assert oracle.accuracy == pytest.approx(1.0)


# -- end to end on a real set ---------------------------------------------------------------------


def test_replay_route_on_date_cot1_prints_the_documented_schema() -> None:
    code, out, _ = invoke("--route", str(REAL), "--perms", "1", "--lams", "0,0.1,10", "--json")
    assert code == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    entry = doc["sets"]["date_cot1"]
    ref = entry["reference"]
    assert (ref["model"], ref["k"]) == ("gpt-4", 3)
    assert ref["accuracy"] == pytest.approx(0.889, abs=0.01)
    assert ref["cost"] == pytest.approx(0.0214, abs=0.0002)
    assert {p["mode"] for p in entry["route"]} == {"auto", "cascade"}
    for p in entry["route"]:
        assert set(p) >= {"mode", "lam", "accuracy", "cost", "relative_cost", "escalated",
                          "share_by_model"}  # fmt: skip
        assert p["relative_cost"] == pytest.approx(p["cost"] / ref["cost"], rel=1e-3)
    base = entry["baselines"]
    assert {s["model"] for s in base["single"]} == {"llama-2-13b", "gpt-3.5-turbo", "gpt-4"}
    assert {tuple(c["models"]) for c in base["vote_cascade"]} >= {
        ("llama-2-13b", "gpt-3.5-turbo", "gpt-4"), ("gpt-3.5-turbo", "gpt-4")}  # fmt: skip
    assert set(c for c in base["vote_cascade"][0]) >= {"models", "k", "tau", "accuracy", "cost"}
    assert set(base["oracle"]) >= {"accuracy", "cost"}
    assert base["oracle"]["accuracy"] > ref["accuracy"]
    cheap = [p for p in entry["route"] if p["lam_per_reference"] == 10]
    assert all(p["relative_cost"] < 0.1 for p in cheap)


def test_each_model_has_its_own_sample_cap(tmp_path: Path) -> None:
    """A route may not plan or draw beyond a model's cap, even with samples left in all."""
    rs = load_routing_set(toy(tmp_path / "s"))
    route = calibrate_route(rs, np.arange(rs.questions), ("weak",), 0, LIGHT_SHRINK, pool=False)
    costs = {"weak": 1e-6}
    free = route.start(costs, 0.0, 10)
    assert free.decide({}).wave == 2  # what the plan wants: two draws, then perhaps more
    assert free.decide({"weak": ["1"]}).wave == 1
    capped = route.start(costs, 0.0, 10, caps={"weak": 1})
    assert capped.decide({}).wave == 1
    assert capped.decide({"weak": ["1"]}).stop


def test_pooled_shrinkage_borrows_from_the_leader_votes_row() -> None:
    """A seldom-seen cell moves toward its row (same leader votes), not straight to the curve."""
    from controller.routing import shrunk

    weight = np.array([[0.0, 0.0], [9.0, 1.0]])  # row v1=1: 9 questions at v2=0, 1 at v2=1
    total = np.array([[0.0, 0.0], [9.0, 0.0]])  # right 9 of 9 at v2=0, 0 of 1 at v2=1
    plain = shrunk(total, weight, 1, 1, toward=0.5, shrink=1.0)
    pooled = shrunk(total, weight, 1, 1, toward=0.5, shrink=1.0, pool=True)
    assert plain == pytest.approx(0.25)  # (0 + 1·0.5) / (1 + 1)
    row = (9.0 + 0.5) / (10.0 + 1.0)
    assert pooled == pytest.approx((0 + row) / 2)


# -- logs with failed calls ---------------------------------------------------------------------


def ragged(root: Path, n: int = 40) -> Path:
    """The toy set with failed calls: the weak model kept one wrong sample on every fourth
    question, and the strong model none on question 3 and one on question 5."""
    sure: list[str | None] = ["7"] * 4
    split: list[str | None] = ["7", "8", "9", None]
    lone: list[str | None] = ["8"]
    weak = [lone if i % 4 == 1 else sure if i % 2 == 0 else split for i in range(n)]
    strong: list[list[str | None]] = [["7", "7"] for _ in range(n)]
    strong[3], strong[5] = [], ["7"]
    return write_set(root, weak, strong)


def test_a_ragged_log_is_replayed_within_what_each_question_recorded(tmp_path: Path) -> None:
    rs = load_routing_set(ragged(tmp_path / "s"))
    assert rs.skipped == ("q3",) and rs.questions == 39 and "q3" not in rs.ids
    weak, strong = rs.model("weak"), rs.model("strong")
    assert weak.samples == 4 and strong.samples == 2
    five = rs.ids.index("q5")
    assert strong.recorded[five] == 1 and weak.recorded[rs.ids.index("q1")] == 1
    draws = Draws.make(rs, perms=4, seed=0)
    rows = folds(rs.questions, 2, seed=0)
    settings = RouteSettings(("weak", "strong"), shrink=LIGHT_SHRINK, pool=False)
    # λ = 0: every draw that may help is worth buying. Where the weak log holds one wrong
    # sample, the route must know it can draw no more there and go on to the strong model.
    (p,) = replay_routes(rs, draws, rows, settings, [0.0], ("cascade",))
    lams = [0.0, 1.0, 30.0, 1000.0]  # per dollar: from free to dear compute
    for point in replay_routes(rs, draws, rows, settings, lams, ("auto", "cascade")):
        assert point.cut_short.sum() == 0  # the route's caps are the log's
    spent_all = (weak.call_cost + weak.sample_cost.sum(axis=1)
                 + strong.call_cost + strong.sample_cost.sum(axis=1))  # fmt: skip
    assert np.all(p.cost <= spent_all + 1e-12)  # padding slots cost nothing and are never drawn
    assert p.correct.mean() == pytest.approx(1.0)
    for i in range(rs.questions):  # a draw order puts every unrecorded slot last
        recorded = int(weak.recorded[i])
        assert np.all(draws.codes(rs, "weak")[:, i, recorded:] == -2)
        assert np.all(draws.codes(rs, "weak")[:, i, :recorded] != -2)


def test_a_ragged_weak_vote_is_a_share_of_what_was_drawn(tmp_path: Path) -> None:
    """One recorded sample is a unanimous vote: τ = 1 accepts it, as 1 of 1, not 1 of 4."""
    rs = load_routing_set(ragged(tmp_path / "s"))
    draws = Draws.make(rs, perms=2, seed=0)
    weak, strong = Votes.of(rs, draws, "weak"), Votes.of(rs, draws, "strong")
    cascade = vote_cascade([weak, strong], 4, 1.0)
    w = rs.model("weak")
    one = rs.ids.index("q1")  # weak kept only "8": accepted, the strong model never paid
    assert cascade.cost[one] == pytest.approx(w.call_cost[one] + w.sample_cost[one].sum())
    assert cascade.correct[one] == 0.0 and single(weak, 4).correct[one] == 0.0


def test_replay_route_reports_the_questions_it_left_out(tmp_path: Path) -> None:
    root = ragged(tmp_path / "s")
    code, out, _ = invoke("--route", str(root), "--perms", "1", "--lams", "0,1", "--json")
    assert code == 0
    assert json.loads(out)["sets"]["s"]["skipped"] == ["q3"]
    code, _, err = invoke("--route", str(root), "--perms", "1", "--lams", "0,1")
    assert code == 0 and "left out 1 question(s)" in err and "q3" in err


def test_calibration_width_leaves_out_the_few_short_questions() -> None:
    from controller.scaling.served import calibration_width

    assert calibration_width([3] * 10) == 3
    assert calibration_width([3] * 9 + [0]) == 3  # one failed call does not make K = 0
    assert calibration_width([3, 3, 1, 1, 1]) == 1  # most questions are short: K follows them
    assert calibration_width([]) == 0


def test_models_are_ordered_by_price_whatever_the_manifest_says(tmp_path: Path) -> None:
    """The reference is the dearest model and chains run cheapest first, even from a manifest
    that lists the dear model first."""
    root = toy(tmp_path / "s", n=4)
    doc = json.loads((root / "manifest.json").read_text())
    doc["models"].reverse()
    (root / "manifest.json").write_text(json.dumps(doc))
    rs = load_routing_set(root)
    assert [m.id for m in rs.models] == ["weak", "strong"]
    code, out, _ = invoke("--route", str(root), "--perms", "1", "--lams", "0", "--folds", "2",
                          "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["sets"]["s"]["reference"]["model"] == "strong"


# -- the frontier plot ----------------------------------------------------------------------------


def test_the_frontier_axis_is_log_unless_a_point_costs_nothing() -> None:
    assert x_scale([0.01, 0.5, 1.0]) == ("log", {})
    assert x_scale([0.0, 0.01, 0.5, 1.0]) == ("symlog", {"linthresh": 0.01})


@pytest.mark.parametrize("weak_price", [(1.0, 2.0), (0.0, 0.0)])
def test_plot_draws_a_panel_even_when_the_cheap_model_is_free(
    tmp_path: Path, weak_price: tuple[float, float]
) -> None:
    """A self-hosted model priced at 0: its points cost 0, and the plot still draws (on the
    symlog axis chosen above; on a log axis they had vanished)."""
    root = toy(tmp_path / "s")
    doc = json.loads((root / "manifest.json").read_text())
    doc["models"][0]["prompt_per_1m"], doc["models"][0]["completion_per_1m"] = weak_price
    (root / "manifest.json").write_text(json.dumps(doc))
    png = tmp_path / "frontier.png"
    code, out, err = invoke(
        "--route", str(root), "--perms", "1", "--lams", "0,1", "--json", "--plot", str(png)
    )
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    costs = [b["cost"] for b in json.loads(out)["sets"]["s"]["baselines"]["single"]]
    assert (min(costs) == 0.0) == (weak_price == (0.0, 0.0))


# -- a folder of sets -----------------------------------------------------------------------------


def test_a_folder_of_sets_is_scored_one_by_one(tmp_path: Path) -> None:
    toy(tmp_path / "b_set", n=20)
    toy(tmp_path / "a_set", n=20)
    (tmp_path / "notes").mkdir()  # a folder without a manifest is not a set, and not an error
    code, out, err = invoke("--route", str(tmp_path), "--perms", "1", "--lams", "0,1", "--json")
    assert code == 0, err
    sets = json.loads(out)["sets"]
    assert list(sets) == ["a_set", "b_set"]
    assert all(s["reference"]["model"] == "strong" for s in sets.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lams", "0,x"], "--lams must be comma-separated numbers >= 0"),
        (["--lams", "-1"], "--lams must be comma-separated numbers >= 0"),
        (["--folds", "1"], "--folds must be between 2 and"),
    ],
)
def test_bad_route_options_exit_2_naming_them(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = invoke("--route", str(toy(tmp_path / "s", n=10)), "--perms", "1", *args)
    assert code == 2 and out == "" and message in err


def test_a_folder_with_no_set_or_a_question_without_gold_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke("--route", str(tmp_path / "empty"), "--json")
    assert code == 2 and "no manifest.json in it or in its folders" in err
    root = toy(tmp_path / "s", n=5)
    for name in ("weak", "strong"):
        rows = [json.loads(x) for x in (root / f"{name}.jsonl").read_text().splitlines()]
        rows[1]["gold"] = None
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, err = invoke("--route", str(root), "--json")
    assert code == 2 and "weak.jsonl:2: no `gold`" in err
    for name in ("weak", "strong"):  # judged samples with no gold: a replay file, not a set
        rows = [json.loads(x) for x in (root / f"{name}.jsonl").read_text().splitlines()]
        for sample in rows[1]["samples"]:
            sample["correct"] = sample["answer"] == "7"
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, err = invoke("--route", str(root), "--json")
    assert code == 2 and "weak.jsonl:2: gold: missing" in err


# -- sets unlike the dev sets (found by an audit of the replay on unseen data) -------------------


def test_a_date_set_recorded_as_options_keeps_its_answers(tmp_path: Path) -> None:
    """The date task's default extractor read no option letter: every answer abstained and
    every baseline scored 0. It now applies only when it reads the set's gold."""
    options: list[list[str | None]] = [["(A)", "(A)", "(B)"] for _ in range(6)]
    root = write_set(tmp_path / "d", options, [["(A)", "(A)"] for _ in range(6)],
                     {"task": "date_understanding"})  # fmt: skip
    for model in ("weak", "strong"):
        text = (root / f"{model}.jsonl").read_text().replace('"gold": "7"', '"gold": "(A)"')
        (root / f"{model}.jsonl").write_text(text)
    rs = load_routing_set(root)
    assert rs.extractor is None
    assert rs.model("weak").codes.tolist() == [[0, 0, 1]] * 6  # (A) is gold: code 0
    dates = write_set(tmp_path / "dates", [["5/1/2021"]], [["05/01/2021"]],
                      {"task": "date_understanding"})  # fmt: skip
    for model in ("weak", "strong"):
        text = (dates / f"{model}.jsonl").read_text().replace('"gold": "7"', '"gold": "05/01/2021"')
        (dates / f"{model}.jsonl").write_text(text)
    assert load_routing_set(dates).extractor == "date"  # a date set keeps its normaliser


def test_a_repeated_question_id_is_still_its_own_question(tmp_path: Path) -> None:
    """Calibration tables are keyed by id: a log that repeats an id pooled two questions into
    one and moved every route point. Each row now counts alone, as with distinct ids."""
    rng = np.random.default_rng(0)

    def answers(n: int, right: float) -> list[list[str | None]]:
        return [["7" if rng.random() < right else str(rng.integers(8, 10)) for _ in range(n)]
                for _ in range(120)]  # fmt: skip

    weak, strong = answers(10, 0.4), answers(3, 0.85)
    plan = ReplayPlan(perms=2, single_t2=False, lams=(0.0, 0.1, 1.0))
    distinct = replay_set(load_routing_set(write_set(tmp_path / "a", weak, strong)), plan)
    same = write_set(tmp_path / "b", weak, strong)
    for model in ("weak", "strong"):
        text = (same / f"{model}.jsonl").read_text()
        (same / f"{model}.jsonl").write_text(re.sub(r'"id": "q\d+"', '"id": "q"', text))
    repeated = replay_set(load_routing_set(same), plan)
    assert [p["accuracy"] for p in repeated["route"]] == [p["accuracy"] for p in distinct["route"]]
    assert [p["cost"] for p in repeated["route"]] == [p["cost"] for p in distinct["route"]]


def test_a_manifest_without_tokens_per_char_or_with_a_bom_is_read(tmp_path: Path) -> None:
    """The README's 0.25 tokens per character is the default, and a byte-order mark (as some
    editors write) opens neither the manifest nor a model file with an error."""
    root = toy(tmp_path / "t", n=4)
    doc = json.loads((root / "manifest.json").read_text())
    del doc["tokens_per_char"]
    (root / "manifest.json").write_text("\ufeff" + json.dumps(doc), encoding="utf-8")
    weak = root / "weak.jsonl"
    weak.write_text("\ufeff" + weak.read_text(), encoding="utf-8")
    read, plain = load_routing_set(root), load_routing_set(toy(tmp_path / "u", n=4))
    for got, want in zip(read.models, plain.models, strict=True):
        assert got.codes.tolist() == want.codes.tolist()
        assert got.sample_cost.tolist() == want.sample_cost.tolist()  # 0.25 tokens a character
        assert got.call_cost.tolist() == want.call_cost.tolist()
