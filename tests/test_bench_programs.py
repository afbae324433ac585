"""bench/programs.py: recorded programs re-run as the routing sets' source ran them, and their
answers lined back up with their texts (the probe's recipe for program-of-thought logs)."""

from __future__ import annotations

from bench.programs import realign, run_programs, same


def test_programs_run_to_their_ans_and_failures_are_none() -> None:
    programs = [
        "x = 6\nans = x * 7",  # a number reads as the source's float string
        "ans = 'more likely'",
        "raise ValueError('no')",
        "ans = undefined_name + 1",
        "def f():\n    return rate * 2\nrate = 3\nans = f()",  # the source's exec: locals apart
        "import sys\nsys.exit(3)",  # must not end the run of the others
        "print('noise')\nans = [5, 6]",  # stdout is not the answer channel; a list's first
    ]
    assert run_programs([programs]) == [["42.0", "more likely", None, None, None, None, "5.0"]]


def test_a_program_that_never_ends_fails_alone() -> None:
    got = run_programs([["ans = 1", "while True:\n    pass", "ans = 2"], ["ans = 3"]])
    assert got == [["1.0", None, "2.0"], ["3.0"]]


def test_realign_puts_recorded_answers_back_on_their_texts() -> None:
    # the source dropped the failed second program from its list
    assert realign(["18.0", None, "17.0"], [18.0, 17.0]) == ["18.0", None, "17.0"]
    assert realign(["more likely", None], ["more likely"]) == ["more likely", None]


def test_realign_refuses_a_mapping_that_does_not_fit() -> None:
    assert realign(["18.0", None, "17.0"], [18.0, 16.0]) is None
    assert realign(["18.0", "17.0"], [18.0]) is None


def test_same_compares_numbers_within_tolerance_and_text_stripped() -> None:
    assert same("18.0", 18) and same("0.1", "0.1000000001")
    assert same("more likely", " more likely ") and not same("less likely", "more likely")
    assert same(None, None) and not same("1.0", None)
