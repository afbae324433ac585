"""`t2serve replay` on small fixture files: output, scoring, determinism and bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from controller.aggregate import get_extractor
from controller.replay import ReplayDataError, load_replay, parse_lines, replay

DATA = Path(__file__).parent / "data" / "replay_small.jsonl"
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["replay", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_output_has_the_documented_fields() -> None:
    code, out, _ = invoke(
        "--data", str(DATA), "--policy", "adaptive_consistency", "--perms", "4", "--json"
    )
    assert code == 0
    obj = json.loads(out.strip().splitlines()[-1])
    for key in ("accuracy", "accuracy_ci95", "mean_samples", "mean_tokens", "questions", "policy"):
        assert key in obj
    assert obj["questions"] == 9
    assert obj["policy"] == "adaptive_consistency:0.95"
    lo, hi = obj["accuracy_ci95"]
    assert lo <= obj["accuracy"] <= hi
    assert 1 <= obj["mean_samples"] <= 12


def test_policy_all_compares_every_policy_in_a_table() -> None:
    code, out, _ = invoke("--data", str(DATA), "--policy", "all", "--perms", "2")
    assert code == 0
    for name in (
        "fixed:1",
        "fixed:16",
        "fixed:all",
        "adaptive_consistency",
        "esc:5",
        "margin:4",
        "t2",
    ):
        assert name in out


def test_plot_is_written(tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    code, _, _ = invoke(
        "--data", str(DATA), "--policy", "esc", "--perms", "1", "--plot", str(png), "--json"
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_is_deterministic_and_respects_recorded_samples() -> None:
    questions, _ = load_replay(DATA, get_extractor("answer_is,last_number"))
    first = replay(questions, "t2", perms=3, seed=7)
    again = replay(questions, "t2", perms=3, seed=7)
    assert first.to_json() == again.to_json()
    everything = replay(questions, "fixed:100", perms=2)
    assert everything.mean_samples == pytest.approx(
        sum(len(q.samples) for q in questions) / len(questions)
    )


def test_scoring_by_gold_and_by_correct_flags() -> None:
    lines = [
        json.dumps({"id": "g", "gold": "18", "samples": [{"answer": "18.0"}, {"answer": "$18"}]}),
        json.dumps(
            {
                "id": "c",
                "gold": None,
                "samples": [{"answer": "x", "correct": True}, {"answer": "x", "correct": True}],
            }
        ),
        json.dumps({"id": "t", "gold": "4", "samples": [{"text": "The answer is 4."}]}),
    ]
    questions, _ = parse_lines(lines, get_extractor("answer_is,last_number"))
    assert questions[2].samples[0].answer == "4"
    assert replay(questions, "fixed:2", perms=2).accuracy == 1.0


def test_a_null_recorded_answer_abstains_and_only_a_missing_one_is_read_from_text() -> None:
    """A failed program's text still holds numbers; the source said it has no answer."""
    program = "def solution():\n    total = 7 * 3\n    return total"
    line = json.dumps({"id": "p", "gold": "21", "samples": [
        {"text": program, "answer": None},  # the program failed when the source ran it
        {"text": "The answer is 21."},  # recorded without an answer: read the text
        {"text": "ran: 21", "answer": "21.0"},
    ]})  # fmt: skip
    [question], _ = parse_lines([line], get_extractor("answer_is,last_number"))
    assert [s.answer for s in question.samples] == [None, "21", "21"]


def test_a_named_extractor_also_reads_recorded_answers(tmp_path: Path) -> None:
    """`--extractor date` must not be a silent no-op on a file whose samples all carry an
    answer: it normalises them (and gold), as `--route` and `calibrate --from-replay` do."""
    data = tmp_path / "dates.jsonl"
    data.write_text(json.dumps({"id": "d", "gold": "01/05/2021", "samples": [
        {"text": "…", "answer": "Jan 5, 2021"}, {"text": "…", "answer": "Today is 01/05/2021."},
    ]}) + "\n")  # fmt: skip
    named = json.loads(invoke("--data", str(data), "--policy", "fixed:2", "--extractor", "date",
                              "--json")[1])  # fmt: skip
    default = json.loads(invoke("--data", str(data), "--policy", "fixed:2", "--json")[1])
    assert named["accuracy"] == 1.0
    assert default["accuracy"] == 0.0  # recorded answers only normalised: neither matches


def test_the_date_extractor_reads_year_first_gold_and_answers_alike() -> None:
    """A set whose gold and answers are ISO dates (a prompt asking for YYYY-MM-DD, or a
    program printing a date) must not abstain on every answer against a gold kept as text."""
    line = json.dumps({"id": "d", "gold": "2021-01-05", "samples": [
        {"text": "…", "answer": "2021-01-05"}, {"text": "…", "answer": "Today is 1/5/2021."},
        {"text": "…", "answer": "2021-01-06"},
    ]})  # fmt: skip
    [question], _ = parse_lines([line], get_extractor("date"), named=True)
    assert question.gold == "01/05/2021"
    assert [s.answer for s in question.samples] == ["01/05/2021", "01/05/2021", "01/06/2021"]


def test_a_number_gold_and_number_answers_are_read_by_value() -> None:
    """Logs written by code keep numbers as JSON numbers (84.0 for 84): a number is a gold."""
    line = json.dumps({"id": "n", "gold": 84.0, "samples": [
        {"text": "…", "answer": 84}, {"text": "…", "answer": "84.0"}, {"text": "…", "answer": 81.5},
    ]})  # fmt: skip
    [question], _ = parse_lines([line], get_extractor("answer_is,last_number"))
    assert question.gold == "84"
    assert [s.answer for s in question.samples] == ["84", "84", "81.5"]


def test_a_true_false_answer_is_an_answer_not_a_bad_file() -> None:
    """A program of thought may return a bool, and a log may keep it as one: it votes as the
    text it is ("True"), as it did before answers' types were checked."""
    line = json.dumps({"id": "b", "gold": "yes", "samples": [
        {"text": "ans = True", "answer": True}, {"text": "…", "answer": "yes"},
        {"text": "ans = True", "answer": True}]})  # fmt: skip
    [question], _ = parse_lines([line], get_extractor("answer_is,last_number"))
    answers = [s.answer for s in question.samples]
    assert answers[0] == answers[2] != answers[1] == question.gold


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": 1, "gold": "1", "samples": [{"answer": "1"}]', "not valid JSON"),
        ('{"id": 1, "gold": "1"}', "missing `samples`"),
        ('{"id": 1, "gold": "1", "samples": []}', "empty `samples`"),
        ('{"id": 1, "gold": "1", "samples": [{}]}', "no `answer`, `text` or `correct`"),
        ('{"id": 1, "gold": null, "samples": [{"answer": "1"}]}', "needs a `correct` flag"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": 1, "gold": "1", "samples": {"answer": "1"}}', "must be a list"),
        (
            '{"id": 1, "gold": {"05/01/2021": 1}, "samples": [{"answer": "1"}]}',
            "`gold` must be a string, a number or null",
        ),
        ('{"id": 1, "gold": true, "samples": [{"answer": "1"}]}', "`gold` must be a string"),
        # a field of the wrong type is an error, never read as something else or as absent
        (
            '{"id": 1, "gold": "1", "samples": [{"text": 5}]}',
            "sample 0 `text` must be a string or null, not a number",
        ),
        (
            '{"id": 1, "gold": "1", "samples": [{"answer": "1"}, {"text": ["x"], "answer": "1"}]}',
            "sample 1 `text` must be a string or null, not a list",
        ),
        (
            '{"id": 1, "gold": "1", "samples": [{"answer": ["1"]}]}',
            "sample 0 `answer` must be a string, a number, true/false or null, not a list",
        ),
        ('{"id": 1, "gold": "1", "samples": [{"answer": {"x": 1}}]}', "not an object"),
        ('{"id": 1, "gold": "1", "samples": [{"answer": NaN}]}', "`answer` must be"),
        (
            '{"id": 1, "gold": "1", "samples": [{"answer": "1", "correct": "yes"}]}',
            "sample 0 `correct` must be true/false or null, not a string",
        ),
        (
            '{"id": 1, "gold": "1", "samples": [{"answer": "1", "tokens": "12"}]}',
            "sample 0 `tokens` must be a number of at least 0, or null, not a string",
        ),
        (
            '{"id": 1, "gold": "1", "samples": [{"answer": "1", "num_tokens": -3}]}',
            "`num_tokens` must be a number of at least 0",
        ),
        ('{"id": 1, "gold": "1", "samples": [5]}', "sample 0 must be an object, not a number"),
        ('{"id": 1, "gold": "1", "samples": "1"}', "`samples` must be a list, not a string"),
        (
            '{"id": [1], "gold": "1", "samples": [{"answer": "1"}]}',
            "`id` must be a string, a number or null, not a list",
        ),
        (
            '{"id": 1, "question": 7, "gold": "1", "samples": [{"answer": "1"}]}',
            "`question` must be a string or null, not a number",
        ),
        ('{"id": 1, "gold": Infinity, "samples": [{"answer": "1"}]}', "not Infinity"),
        (
            '{"id": 1, "gold": "1", "samples": [{"answer": %s}]}' % ("9" * 5000),
            "not JSON this reader takes",
        ),  # past Python's 4,300-digit limit: was a traceback
        ("[" * 100_000 + "]" * 100_000, "not JSON this reader takes"),  # past the stack
    ],
)
def test_bad_input_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    good = '{"id": 0, "gold": "1", "samples": [{"answer": "1"}]}'
    bad.write_text(f"{good}\n\n{line}\n")
    code, _, err = invoke("--data", str(bad), "--json", "--no-skip-empty")
    assert code == 2
    assert f"{bad}:3:" in err and message in err
    assert "Traceback" not in err
    with pytest.raises(ReplayDataError, match=":3:"):
        load_replay(bad, get_extractor("exact"))


def test_an_empty_question_is_left_out_and_named_by_default(tmp_path: Path) -> None:
    """A failed call leaves a question with no samples: the replay scores the rest and names
    the line on stderr (also under --json, whose stdout stays one object)."""
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"id": 0, "gold": "1", "samples": [{"answer": "1"}]}\n'
        '{"id": 1, "gold": "1", "samples": []}\n'
    )
    code, out, err = invoke("--data", str(data), "--json", "--policy", "fixed:1")
    assert code == 0 and json.loads(out)["questions"] == 1
    assert json.loads(out)["skipped_lines"] == [2]
    assert f"{data}: left out 1 question(s) with no samples, at lines: 2" in err
    code, out, _ = invoke("--data", str(data), "--json", "--policy", "fixed:1",
                          "--policy", "fixed:2")  # fmt: skip
    assert code == 0 and json.loads(out)["skipped_lines"] == [2]
    code, out, _ = invoke("--data", str(data), "--skip-empty", "--json", "--policy", "fixed:1")
    assert code == 0 and json.loads(out)["questions"] == 1


def test_no_skip_empty_makes_an_empty_question_an_error(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": 0, "gold": "1", "samples": []}\n')
    code, _, err = invoke("--data", str(data), "--no-skip-empty", "--json")
    assert code == 2 and f"{data}:1: empty `samples`" in err and "--no-skip-empty" in err


def test_loo_names_each_files_empty_questions(tmp_path: Path) -> None:
    for name, empty in (("a", False), ("b", True)):
        lines = [
            f'{{"id": {i}, "gold": "1", "samples": [{{"answer": "1"}}, {{"answer": "2"}}]}}'
            for i in range(4)
        ]
        if empty:
            lines[2] = '{"id": 2, "gold": "1", "samples": []}'
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = invoke(
        "--data",
        str(tmp_path),
        "--loo",
        "--json",
        "--perms",
        "1",
        "--tune-perms",
        "1",
        "--budgets",
        "2",
    )
    assert code == 0, err
    assert f"{tmp_path / 'b.jsonl'}: left out 1 question(s) with no samples, at lines: 3" in err
    assert "a.jsonl" not in err
    assert json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "bogus"], "unknown policy"),
        (["--policy", "fixed:4", "--avg-samples", "4"], "adaptive"),
        (["--extractor", "nope"], "unknown extractor"),
        (["--perms", "0"], "--perms"),
        (["--avg-samples", "0.5"], "--avg-samples"),
        (["--avg-samples", "inf"], "--avg-samples must be a finite number"),  # was a traceback
        (["--avg-samples", "nan"], "--avg-samples must be a finite number"),
        (["--budget", "infx"], "--budget 'infx'"),  # was a replay printing `Infinity`
        (["--budget", "1e400"], "--budget '1e400'"),
        (["--budget", "4x", "--policy", "t2", "--policy", "esc"], "paces one policy"),
        (["--budget", "4x", "--perms", "3"], "--perms does not apply with --budget"),
        (["--budget", "4x", "--avg-samples", "3"], "--avg-samples does not apply with --budget"),
        (["--lams", "1"], "--lams does not apply with --data"),
        (["--folds", "3"], "--folds does not apply with --data"),
        (["--no-descend"], "--descend/--no-descend does not apply with --data"),
        (["--tune-perms", "3"], "--tune-perms does not apply with --data"),
        (["--queries-per-day", "5"], "--queries-per-day does not apply with --data"),
        (["--seed", "-1"], "--seed"),  # was numpy's traceback
        (["--plot", "/proc/t2serve-cannot/x.png"], "--plot: cannot write"),  # before replaying
        (["--plot", "frontier.txt"], "--plot: frontier.txt: name a figure file"),
    ],
)
def test_bad_options_exit_2_with_a_reason(args: list[str], message: str) -> None:
    code, _, err = invoke("--data", str(DATA), "--json", *args)
    assert code == 2 and message in err


def test_missing_file() -> None:
    code, _, err = invoke("--data", "/nonexistent/replay.jsonl")
    assert code == 2 and "no such file" in err


def test_a_folder_given_as_data_is_named_as_one(tmp_path: Path) -> None:
    code, _, err = invoke("--data", str(tmp_path), "--json")
    assert code == 2 and f"{tmp_path}: a folder" in err and "--loo" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # other modes' options were read by nobody: the run looked as if they had been heard
        (
            ["--route", "../shared/data/routing/gsm8k_pot1", "--policy", "esc"],
            "--policy does not apply with --route",
        ),
        (
            ["--route", "../shared/data/routing/gsm8k_pot1", "--no-skip-empty"],
            "--skip-empty/--no-skip-empty does not apply with --route",
        ),
        (
            ["--route", "../shared/data/routing/gsm8k_pot1", "--data", str(DATA)],
            "--data does not apply with --route",
        ),
        (
            ["--data", str(DATA.parent), "--loo", "--policy", "esc"],
            "--policy does not apply with --loo",
        ),
        (
            ["--data", str(DATA.parent), "--loo", "--budgets", "inf"],
            "--budgets must be finite numbers",
        ),  # was a traceback deep in the pacer
        # λ per reference cost past a float's range: was a traceback from the route
        (
            ["--route", "../shared/data/routing/gsm8k_pot1", "--lams", "1e308", "--perms", "1"],
            "gsm8k_pot1: λ = 1e+308 / the reference's cost",
        ),
    ],
)
def test_options_of_another_mode_and_non_finite_ones_are_refused(
    args: list[str], message: str
) -> None:
    code, out, err = invoke(*args, "--json")
    assert code == 2 and message in err and "Traceback" not in err
    assert out == ""
