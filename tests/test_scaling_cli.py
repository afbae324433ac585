"""`t2serve fit/predict/plan/plot` through the real CLI: happy paths and every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from cli.app import app
from controller.scaling.curves import Curves, LossParams, load_curves

HEADER = "model,params,tokens,problem,samples,correct"
PYTHIA = "../shared/data/passk/pythia_gsm8k.csv"
runner = CliRunner()


def _csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "counts.csv"
    path.write_text(header + "\n" + body.strip() + "\n")
    return path


def _synthetic_csv(tmp_path: Path) -> Path:
    """Two small models whose per-question rates come from known Betas."""
    rng = np.random.default_rng(0)
    lines = []
    for model, params, a, b in (("tiny", 1e6, 0.4, 30.0), ("small", 3e6, 0.6, 12.0)):
        for q in range(150):
            c = rng.binomial(200, rng.beta(a, b))
            lines.append(f"{model},{params:g},{1e9:g},{q},200,{c}")
    return _csv(tmp_path, "\n".join(lines))


def _assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("body", "header", "needles"),
    [
        ("m,1e9,1e9,1,10,2", "model,params,tokens,problem,samples", ("missing column", "correct")),
        ("m,1e9,1e9,1,10,2\nm,1e9,1e9,2,10,11", HEADER, ("row 3", "correct", "exceeds")),
        ("m,1e9,1e9,1,-10,0", HEADER, ("row 2", "samples", "negative")),
        ("m,1e9,1e9,1,10,-1", HEADER, ("row 2", "correct", "negative")),
        ("m,1e9,1e9,1,10,nan", HEADER, ("row 2", "correct", "NaN")),
        ("m,NaN,1e9,1,10,2", HEADER, ("row 2", "params", "NaN")),
        ("m,1e9,1e9,1,ten,2", HEADER, ("row 2", "samples", "not a number")),
        ("m,1e9,,1,10,2", HEADER, ("row 2", "tokens", "empty")),
    ],
)
def test_fit_rejects_bad_rows_naming_row_and_field(
    tmp_path: Path, body: str, header: str, needles: tuple[str, ...]
) -> None:
    data = _csv(tmp_path, body, header)
    result = runner.invoke(
        app, ["fit", "--data", str(data), "--approach", "beta", "--out", str(tmp_path / "c.json")]
    )
    _assert_one_line_error(result, *needles)
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--approach", "magic"], ("--approach", "magic")),
        (["--approach", "beta", "--where", "params>1e12"], ("no rows match",)),
        (["--approach", "beta", "--where", "flops<3"], ("--where", "flops")),
        (
            ["--approach", "beta", "--where", "params<=__import__('os')"],
            ("--where", "not a number"),
        ),
        (["--approach", "beta", "--where", "params 3"], ("--where", "cannot parse")),
        (["--approach", "loss"], ("two distinct params",)),
    ],
)
def test_fit_rejects_bad_options(
    tmp_path: Path, extra: list[str], needles: tuple[str, ...]
) -> None:
    data = _csv(tmp_path, "m,1e9,1e9,1,10,2\nm,1e9,1e9,2,10,0")
    result = runner.invoke(
        app, ["fit", "--data", str(data), "--out", str(tmp_path / "c.json"), *extra]
    )
    _assert_one_line_error(result, *needles)


def test_fit_beta_then_predict_and_plot(tmp_path: Path) -> None:
    data = _synthetic_csv(tmp_path)
    out = tmp_path / "curves.json"
    result = runner.invoke(
        app, ["fit", "--data", str(data), "--approach", "beta", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["approach"] == "beta" and set(doc["models"]) == {"tiny", "small"}
    curves = load_curves(out)
    assert curves.data is not None and len(curves.data.sha256) == 64
    tiny = curves.models["tiny"]  # type: ignore[index]
    assert tiny.fit().mean == pytest.approx(0.4 / 30.4, rel=0.25)

    result = runner.invoke(
        app, ["predict", "--curves", str(out), "--k", "1,10,100", "--model", "small"]
    )
    assert result.exit_code == 0, result.output
    pred = json.loads(result.stdout)
    assert pred["k"] == [1, 10, 100]
    assert pred["pass_at_k"] == sorted(pred["pass_at_k"]) and 0 < pred["pass_at_k"][0] < 1

    ambiguous = runner.invoke(app, ["predict", "--curves", str(out), "--k", "1"])
    _assert_one_line_error(ambiguous, "--model")
    bad_k = runner.invoke(app, ["predict", "--curves", str(out), "--k", "0,5", "--model", "tiny"])
    _assert_one_line_error(bad_k, "--k")

    png = tmp_path / "fit.png"
    result = runner.invoke(
        app, ["plot", "--curves", str(out), "--data", str(data), "--out", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_prints_t2_and_chinchilla(tmp_path: Path) -> None:
    path = tmp_path / "loss.json"
    Curves(
        approach="loss",
        parameters=LossParams(E=0.5, A=400.0, alpha=0.34, B=410.0, beta=0.28, G=2.0, gamma=0.5),
    ).save(path)
    result = runner.invoke(
        app, ["plan", "--curves", str(path), "--train-flops", "1e21", "--inference-flops", "1e11"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["form"] == "paper" and plan["t2"]["k"] >= 1
    assert plan["chinchilla"]["k"] == 1 and plan["chinchilla"]["tokens_per_param"] == 20.0
    result = runner.invoke(
        app,
        ["plan", "--curves", str(path), "--total-flops", "1e22", "--queries", "1e9",
         "--tokens-per-query", "500"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["form"] == "deployment"

    both = runner.invoke(
        app, ["plan", "--curves", str(path), "--train-flops", "1e21", "--total-flops", "1e22"]
    )
    _assert_one_line_error(both, "either")
    small = runner.invoke(
        app, ["plan", "--curves", str(path), "--train-flops", "1e21", "--inference-flops", "10"]
    )
    _assert_one_line_error(small, "too small")
    missing = runner.invoke(
        app,
        [
            "plan",
            "--curves",
            str(tmp_path / "nope.json"),
            "--train-flops",
            "1",
            "--inference-flops",
            "1",
        ],
    )
    _assert_one_line_error(missing, "not found")


def test_loss_fit_on_real_data_is_deterministic(tmp_path: Path) -> None:
    args = [
        "fit",
        "--data",
        PYTHIA,
        "--approach",
        "loss",
        "--where",
        "tokens>=6e10 and params<=1e9",
    ]
    args += ["--starts", "8", "--seed", "3", "--json"]
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a.json")])
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b.json")])
    assert first.exit_code == 0, first.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["parameters"] == b["parameters"]
    assert a["data"]["where"] == "tokens>=6e10 and params<=1e9"
    assert a["diagnostics"]["starts"] == 8


def first_column(table: str) -> set[str]:
    """The first cell of each body row of a rich table."""
    return {line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")}


def test_fit_without_json_prints_a_summary_table(tmp_path: Path) -> None:
    """The table a person reads: each model's pass@1 and Beta for `beta`, the law's
    parameters and diagnostics for `loss`."""
    data = _synthetic_csv(tmp_path)
    beta = runner.invoke(app, ["fit", "--data", str(data), "--approach", "beta",
                               "--out", str(tmp_path / "b.json")])  # fmt: skip
    assert beta.exit_code == 0, beta.output
    assert "beta fit ->" in beta.stdout and "rmse Beta / power law" in beta.stdout
    assert first_column(beta.stdout) == {"tiny", "small"}
    loss = runner.invoke(app, ["fit", "--data", PYTHIA, "--approach", "loss", "--starts", "2",
                               "--out", str(tmp_path / "l.json")])  # fmt: skip
    assert loss.exit_code == 0, loss.output
    assert {"E", "A", "alpha", "G", "gamma", "rmse_log", "starts"} <= first_column(loss.stdout)


def test_version_prints_the_installed_package_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"t2serve {version('t2serve')}"


def test_an_unreadable_curves_file_or_plot_path_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "curves.json"
    bad.write_bytes(b"\xff\xfe{}")  # not UTF-8: was a UnicodeDecodeError traceback
    out = runner.invoke(app, ["predict", "--curves", str(bad), "--k", "1"])
    assert out.exit_code == 2 and "cannot read curves file" in out.stderr
    assert "Traceback" not in out.stderr
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # past the parser's stack
    out = runner.invoke(app, ["predict", "--curves", str(deep), "--k", "1"])
    assert out.exit_code == 2 and "cannot read curves file" in out.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--train-flops", "1e15", "--inference-flops", "1e10", "--min-params", "nan"],
            ("--min-params", "positive finite"),
        ),  # was numpy's All-NaN traceback
        (
            [
                "--total-flops",
                "1e25",
                "--queries",
                "1e6",
                "--tokens-per-query",
                "10",
                "--min-tokens",
                "-1",
            ],
            ("--min-tokens", "positive finite"),
        ),
    ],
)
def test_plan_refuses_search_bounds_that_are_not_positive_numbers(
    args: list[str], needles: tuple[str, ...]
) -> None:
    result = runner.invoke(app, ["plan", "--curves", "configs/curves/pythia-accuracy.json", *args])
    _assert_one_line_error(result, *needles)


def test_plan_on_a_budget_past_any_sample_count_caps_k() -> None:
    # k = C / (2NTQ) was a Python integer past float range: numpy raised a TypeError
    result = runner.invoke(app, ["plan", "--curves", "configs/curves/pythia-accuracy.json",
                                 "--total-flops", "1e308", "--queries", "1e6",
                                 "--tokens-per-query", "10"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 1 <= json.loads(result.stdout)["t2"]["k"] <= 1e15


def test_bad_rows_name_the_file_and_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    data = _csv(tmp_path, "m,1e9,1e9,1,10,2\nm,1e9,1e9,2,10,11")
    out = tmp_path / "curves.json"
    result = runner.invoke(app, ["fit", "--data", str(data), "--approach", "beta",
                                 "--out", str(out)])  # fmt: skip
    _assert_one_line_error(result, f"{data}: row 3")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("[1, 2]\n")  # a line that is JSON but not an object: was AttributeError
    result = runner.invoke(app, ["fit", "--data", str(answers), "--approach", "beta",
                                 "--out", str(out)])  # fmt: skip
    _assert_one_line_error(result, f"{answers}: line 1", "needs 'answers'")
    out.mkdir()  # the target a folder: the rename fails after the fit
    result = runner.invoke(app, ["fit", "--data", str(_synthetic_csv(tmp_path)),
                                 "--approach", "beta", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2 and "--out" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "counts.csv",
                                                          "curves.json"]  # fmt: skip
