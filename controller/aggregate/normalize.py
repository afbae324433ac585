"""Answer normalisation: the one place that decides when two answers are "the same".

Votes are counted over normalised strings, so "18", "18.0", "$18" and "18 dollars" must
collapse to one key, and "1,000" must equal "1000". Numbers compare by exact value
(fractions included: "3/4" == "0.75" == "\\frac{3}{4}"; a decimal longer than FLOAT_DIGITS
significant digits is a program's float: the simple fraction it prints, "0.18181818181818182"
is 2/11, else rounded to FLOAT_DIGITS, so "109.00000000000001" is 109);
everything else compares case- and whitespace-insensitively after stripping simple LaTeX
wrappers. Dates such as "05/01/2021" are not fractions: a numeric date is only zero-padded
("5/1/2021" == "05/01/2021"), never reordered, so a day-first and a month-first tenant both
keep their meaning. Brackets around a one-token answer go ("(B)" is "B"); around a tuple or
an interval they stay ("(2, 3)" is not "[2, 3]").
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\^\s*\{?\\circ\}?|\\%|\\\$")
_SPACES = re.compile(r"\s+")
FLOAT_DIGITS = 12
"""Significant digits a decimal answer keeps. A program's float prints up to 17
("109.00000000000001", "33.333333333333336"), and the noise in the last few would split one
value into several vote keys and miss its gold; no one writes an answer with more than 12."""
MAX_DENOMINATOR = 10_000
FLOAT_NOISE = 1e-15
"""A long decimal is read as the fraction with denominator ≤ MAX_DENOMINATOR within this
relative distance of it, if there is one: "0.18181818181818182" is 2/11, as a gold "2/11" (or a
reply "2/11") says it. A double printed in full is within ~1e-16 of the value it stands for
(a few units in its last place), while a decimal that only resembles a small fraction lies
much farther off (π's 3.14159265358979 is 8e-8 from 355/113; a fraction with q ≤ 10⁴ comes
within 1e-15 of a random 17-digit decimal below 10⁴ about once in a hundred thousand)."""
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_ENCLOSED = re.compile(r"\(([^()\[\],\s]+)\)|\[([^()\[\],\s]+)\]")
"""One token in brackets: an option "(B)", a number "(3)"; never a tuple or an interval."""
_DATE_YEAR_LAST = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4})")
_DATE_YEAR_FIRST = re.compile(r"(\d{4})([/.-])(\d{1,2})\2(\d{1,2})")
_UNIT_WORDS = re.compile(
    r"\s*(?:dollars?|cents?|usd|percent|units?|hours?|minutes?|days?|years?|meters?|"
    r"km|cm|kg|miles?|pounds?|feet|inches?|degrees?)\.?$"
)


def strip_latex(text: str) -> str:
    """Remove the LaTeX a model wraps around a plain answer: $...$, \\text{}, \\frac{}{}."""
    s = text.strip()
    for _ in range(3):  # nested wrappers such as \text{\textbf{x}}
        s = _WRAPPERS.sub(r"\1", s)
    s = _FRAC.sub(r"(\1)/(\2)", s)
    s = _FRAC_SHORT.sub(r"\1/\2", s)
    s = _LATEX_NOISE.sub("", s)
    s = s.replace("\\$", "$")
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$")
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    return s.strip()


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain number ("$1,000.50", "-3", "3/4", "(3)/(4)", "50%", and
    "1e-05" as a program prints a small float), else None."""
    s = text.strip().replace(" ", "")
    s = s.lstrip("$").rstrip(".")
    s = s.removesuffix("%")
    if s.startswith("$"):
        s = s[1:]
    m = re.fullmatch(r"\(?([-+]?\d+)\)?/\(?(\d+)\)?", s)
    if m:
        den = int(m.group(2))
        return Fraction(int(m.group(1)), den) if den else None
    if not _NUMBER.fullmatch(s):
        return None
    try:
        value = Decimal(s.replace(",", ""))
    except (InvalidOperation, ValueError):
        return None
    if "." in s and len(value.as_tuple().digits) > FLOAT_DIGITS:
        # a program's float: 2/11 prints 0.18181818181818182, which is the fraction when one
        # with a small denominator lies within float noise of it; else binary noise only
        # (0.1 * 3 * 60 prints 18.000000000000004), rounded away
        exact = Fraction(value)
        simple = exact.limit_denominator(MAX_DENOMINATOR)
        if abs(simple - exact) <= FLOAT_NOISE * abs(exact):
            return simple
        value = value.quantize(Decimal(1).scaleb(value.adjusted() - FLOAT_DIGITS + 1))
    return Fraction(value)


def format_number(value: Fraction) -> str:
    """Canonical text for a value: "18", "0.75", "-2.5"; "1/3" when no finite decimal exists."""
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def normalize_number_text(text: str) -> str | None:
    """Canonical number text if `text` is a number (optionally with a unit word), else None."""
    s = _UNIT_WORDS.sub("", text.strip().lower())
    value = parse_number(s)
    return None if value is None else format_number(value)


def pad_numeric_date(text: str) -> str | None:
    """A whole-text numeric date with its one- or two-digit parts zero-padded, else None:
    "5/1/2021" → "05/01/2021", "2021-5-1" → "2021-05-01". Models drop the padding as often as
    they keep it; unpadded, one answer would split into two vote keys."""
    m = _DATE_YEAR_LAST.fullmatch(text)
    if m:
        a, sep, b, year = m.groups()
        return f"{int(a):02d}{sep}{int(b):02d}{sep}{year}"
    m = _DATE_YEAR_FIRST.fullmatch(text)
    if m:
        year, sep, a, b = m.groups()
        return f"{year}{sep}{int(a):02d}{sep}{int(b):02d}"
    return None


def normalize_answer(text: str | None) -> str | None:
    """The vote key of an extracted answer, or None (abstain) when nothing is left."""
    if text is None:
        return None
    s = strip_latex(str(text))
    s = _SPACES.sub(" ", s).strip()
    s = s.rstrip(".").strip()
    enclosed = _ENCLOSED.fullmatch(s)
    if enclosed:  # "(B)" is the option "B"; "(3)/(4)" is not one enclosed group
        s = next(g for g in enclosed.groups() if g is not None)
    if not s:
        return None
    number = normalize_number_text(s)
    if number is not None:
        return number
    return pad_numeric_date(s) or s.lower()
