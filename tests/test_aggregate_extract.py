"""Extractors and normalisation on real-looking sample texts (incl. the shared replay formats)."""

import pytest

from controller.aggregate import get_extractor, normalize_answer
from controller.aggregate.extract import EXTRACTOR_NAMES

DATE_TEXT = (
    "Explain: Yesterday was April 30, 2021. Today is one day after April 30, 2021, "
    "so today is May 1, 2021.\nA: 05/01/2021"
)
POT_TEXT = (
    "# Python code, return ans\neggs_per_day = 16\neggs_eaten = 3\nmuffins = 4\n"
    "ans = (eggs_per_day - eggs_eaten - muffins) * 2"
)
GAME24_TEXT = "Steps:\n6 - 4 = 2 (left: 2 5 10)\n5 * 2 = 10 (left: 10 10)\nAnswer: (6 - 4) * 5 = 24"

CASES: list[tuple[str, dict[str, str], str, str | None]] = [
    # last_number
    ("last_number", {}, "She makes 9 * 2 = $18 every day.", "18"),
    ("last_number", {}, "So the total is 1,000 apples.", "1000"),
    ("last_number", {}, "The answer is 18.0", "18"),
    ("last_number", {}, "It costs $1,250.50 in total.", "1250.5"),
    ("last_number", {}, "The temperature drops to -7 degrees.", "-7"),
    ("last_number", {}, "He ran 3 laps, then 4 more, so 7.", "7"),
    ("last_number", {}, "No numbers here at all.", None),
    ("last_number", {}, "She ate 3/4 of the pie", "0.75"),
    ("last_number", {}, "x = 0.50", "0.5"),
    ("last_number", {}, "#### 72", "72"),
    ("last_number", {}, "The result is 1e3? no, it is 1000.", "1000"),
    ("last_number", {}, "The answer is 42.\n", "42"),
    ("last_number", {}, "Total: 2,345,678 people", "2345678"),
    ("last_number", {}, POT_TEXT, "2"),
    ("last_number", {}, DATE_TEXT, "2021"),
    # date (the routing sets' date answers as the models give them)
    ("date", {}, DATE_TEXT, "05/01/2021"),
    ("date", {}, "Today is 5/1/2021.", "05/01/2021"),
    ("date", {}, "Today's date is 08/03/1997.", "08/03/1997"),
    ("date", {}, "If you meant April 29, 2021, the answer would be 4/28/2021", "04/28/2021"),
    ("date", {}, "The answer would be April 29, 2021.", "04/29/2021"),
    ("date", {}, "It was Sept. 3rd 1999", "09/03/1999"),
    ("date", {}, "Sorry, there is no date before that.", None),
    ("date", {}, "The ratio is 3/4 and 12/2021 is not a day", None),
    ("date", {}, "10 days ago of today is 2019-11-20.\nA: 2019-11-20", "11/20/2019"),
    ("date", {}, "Today is 11/22/2019, so 10 days ago was 2019-11-12 00:00:00", "11/12/2019"),
    ("date", {}, "Yesterday was 2019/1/2; today is 1/3/2019.", "01/03/2019"),
    ("date", {}, "Ticket 2019-13-40 is no date", None),
    # boxed
    ("boxed", {}, "Thus the answer is $\\boxed{18}$.", "18"),
    ("boxed", {}, "\\boxed{\\frac{3}{4}}", "0.75"),
    ("boxed", {}, "We get \\boxed{\\dfrac{1}{3}}", "1/3"),
    ("boxed", {}, "first \\boxed{1} then \\boxed{2}", "2"),
    ("boxed", {}, "\\boxed{x^{2}+{y}}", "x^{2}+{y}"),
    ("boxed", {}, "\\boxed{\\text{Yes}}", "yes"),
    ("boxed", {}, "\\boxed{1,000}", "1000"),
    ("boxed", {}, "\\boxed{18.00}", "18"),
    ("boxed", {}, "no box here: 5", None),
    ("boxed", {}, "\\boxed{ 12 }", "12"),
    ("boxed", {}, "\\boxed{\\$18}", "18"),
    ("boxed", {}, "\\fbox{7}", "7"),
    ("boxed", {}, "\\boxed{(2, 3)}", "(2, 3)"),
    ("boxed", {}, "\\boxed{90^\\circ}", "90"),
    ("boxed", {}, "unterminated \\boxed{12", None),
    # choice
    ("choice", {}, "The answer is (B).", "B"),
    ("choice", {}, "Therefore, the answer is C", "C"),
    ("choice", {}, "(D)", "D"),
    ("choice", {}, "e", "E"),
    ("choice", {}, "Answer: A", "A"),
    ("choice", {}, "I think option (E) is right.", "E"),
    ("choice", {}, "So among the options, (A) is wrong and (C) fits.", "C"),
    ("choice", {}, "B) 05/01/2021", "B"),
    ("choice", {}, "The answer is \\boxed{D}", "D"),
    ("choice", {}, "None of these.", None),
    ("choice", {}, "Answer: F", None),
    # answer_is
    ("answer_is", {}, "So the answer is 18.", "18"),
    ("answer_is", {}, "The answer is 3.5.", "3.5"),
    ("answer_is", {}, "Therefore the final answer is $1,000.", "1000"),
    ("answer_is", {}, "The answer is 05/01/2021.", "05/01/2021"),
    ("answer_is", {}, DATE_TEXT, "05/01/2021"),
    ("answer_is", {}, "Final answer: Paris", "paris"),
    ("answer_is", {}, "The answer is: \\boxed{7}", "7"),
    ("answer_is", {}, "The answer is Yes, because it rains.", "yes"),
    ("answer_is", {}, "the answer is 12 apples", "12"),
    ("answer_is", {}, "I am not sure.", None),
    ("answer_is", {}, GAME24_TEXT, "(6 - 4) * 5 = 24"),
    ("answer_is", {}, "Answer: None", "none"),
    ("answer_is", {}, "The answer is **42**.", "42"),
    ("answer_is", {}, "answer = 7", "7"),
    # regex
    ("regex", {"pattern": r"####\s*(?P<answer>[-\d,.]+)"}, "steps...\n#### 1,024", "1024"),
    ("regex", {"pattern": r"Result:\s*(?P<answer>\w+)"}, "Result: OK\nResult: Fail", "fail"),
    ("regex", {"pattern": r"Result:\s*(?P<answer>\w+)"}, "no result", None),
    ("regex", {"pattern": r"<ans>(?P<x>.*?)</ans>"}, "<ans> 18.0 </ans>", "18"),
    # json_field
    ("json_field", {"field": "answer"}, '{"answer": 18, "why": "math"}', "18"),
    ("json_field", {"field": "answer"}, 'Here you go:\n```json\n{"answer": "B"}\n```', "b"),
    ("json_field", {"field": "result.value"}, 'x {"result": {"value": "3/4"}} y', "0.75"),
    ("json_field", {"field": "answer"}, '{"answer": true}', "true"),
    ("json_field", {"field": "answer"}, '{"other": 1}', None),
    ("json_field", {"field": "answer"}, "not json", None),
    ("json_field", {"field": "items.1"}, '{"items": ["a", "b"]}', "b"),
    # exact
    ("exact", {}, "  Hello   World ", "hello world"),
    ("exact", {}, "18.0", "18"),
    ("exact", {}, "$18", "18"),
    ("exact", {}, "05/01/2021", "05/01/2021"),
    ("exact", {}, "", None),
    ("exact", {}, "Not possible to obtain 24", "not possible to obtain 24"),
    # fallback chain
    ("answer_is,last_number", {}, "she pays 12 then 30", "30"),
    ("answer_is,last_number", {}, "The answer is 5. Check: 2+3=5, 10", "5"),
]


@pytest.mark.parametrize(("name", "options", "text", "expected"), CASES)
def test_extractor_table(
    name: str, options: dict[str, str], text: str, expected: str | None
) -> None:
    assert get_extractor(name, **options)(text) == expected


def test_every_extractor_is_in_the_table_with_and_without_an_answer() -> None:
    """Guards the table against the code: an extractor added to EXTRACTOR_NAMES without cases
    (or only ones where it finds something) fails here, not in production."""
    for name in EXTRACTOR_NAMES:
        found = [expected is not None for n, _, _, expected in CASES if n == name]
        assert True in found and False in found, name


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("18", "18.0"),
        ("18", "$18"),
        ("1,000", "1000"),
        ("\\frac{1}{2}", "0.5"),
        ("3/4", "0.750"),
        ("18 dollars", "18"),
        ("50%", "50"),
        ("  Foo Bar ", "foo   bar"),
        ("\\text{Paris}", "paris"),
        ("-0.0", "0"),
        ("+5", "5"),
        ("5/1/2021", "05/01/2021"),
        ("2021-5-1", "2021-05-01"),
        ("1.2.2021", "01.02.2021"),
        ("109.00000000000001", "109.0"),  # a program's float noise (recorded GPT-4 GSM8K)
        ("0.30000000000000004", "0.3"),
        ("33.333333333333336", "33.33333333333333"),  # one value, two computation orders
        ("33.333333333333336", "100/3"),  # ... and the fraction a program's float stands for
        ("1e-05", "0.00001"),  # how a program prints a small float
        ("0.18181818181818182", "2/11"),  # a program's float of a fraction gold (TabMWP)
        ("0.3888888888888889", "\\frac{7}{18}"),
        ("-0.6666666666666666", "-2/3"),
        ("12345.678901234567", "12345.6789012"),  # no small fraction that near: rounded
        ("(B)", "B"),  # a multiple-choice option as "the answer is (B)" leaves it
        ("[c]", "C."),
        ("(3)", "3"),
        ("2.5e+16", "25,000,000,000,000,000"),
    ],
)
def test_normalisation_equates(a: str, b: str) -> None:
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("05/01/2021", "01/05/2021"),  # padded, never reordered: month- and day-first differ
        ("05/01/2021", "2021-05-01"),  # one format is the `date` extractor's job, not this one
        ("5/1/2021", "5/1"),  # the date is not the fraction 5
        ("1.2.2021", "1.2"),
        ("18", "18.5"),
        ("1/3", "0.33"),
        ("3.141592653589793", "355/113"),  # near a fraction, but not within float noise
        ("A", "B"),
        ("1,00", "100"),
        ("12345678901234567", "12345678901234568"),  # whole numbers keep every digit
        ("0.123456789012", "0.123456789013"),  # 12 significant digits are kept as written
        ("33.3333333333", "100/3"),  # a decimal written to 12 digits is not the fraction
        ("(3)/(4)", "3"),  # two groups, not one enclosed answer: still the fraction 3/4
        ("()", "0"),
        ("(2, 3)", "[2, 3]"),  # an open interval is not a closed one
    ],
)
def test_normalisation_distinguishes(a: str, b: str) -> None:
    assert normalize_answer(a) != normalize_answer(b)


def test_unknown_extractor_and_missing_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown extractor"):
        get_extractor("nope")
    with pytest.raises(ValueError, match="pattern"):
        get_extractor("regex")
    with pytest.raises(ValueError, match="named group"):
        get_extractor("regex", pattern=r"\d+")
    with pytest.raises(ValueError, match="field"):
        get_extractor("json_field")
