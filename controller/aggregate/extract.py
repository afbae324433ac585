"""Answer extractors: sample text → normalised answer, or None when the sample abstains.

Each tenant/route picks one by name in config (`get_extractor("boxed")`); a comma-separated
name is a fallback chain ("answer_is,last_number" tries the first, then the next).
Every extractor returns `normalize_answer(...)` of what it found, so votes compare values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from controller.aggregate.normalize import normalize_answer, normalize_number_text

Extractor = Callable[[str], str | None]
"""Maps a sample's text to its normalised answer, or None (the sample abstains)."""

_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w./])-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?!\.\d))?(?![\w/])"
)
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_A_LINE = re.compile(r"^\s*(?:A|Ans)\s*:\s*(.+)$", re.MULTILINE)


def last_number(text: str) -> str | None:
    """The last number in the text ("so she pays $1,250." → "1250")."""
    matches = _NUMBER_IN_TEXT.findall(text.replace("\\$", "$"))
    for raw in reversed(matches):
        number = normalize_number_text(raw.replace("$", "").replace(" ", ""))
        if number is not None:
            return number
    return None


def _balanced(text: str, open_at: int) -> str | None:
    """The content of the brace group whose "{" is at `open_at`, honouring nesting."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def boxed_content(text: str) -> str | None:
    """The raw content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        content = _balanced(text, m.end() - 1)
        if content is not None:
            return content
    bare = re.search(r"\\boxed\s+(\S+)", text)  # "\boxed 5" without braces
    return bare.group(1) if bare else None


def boxed(text: str) -> str | None:
    """LaTeX \\boxed{...}: the last one, nested braces allowed."""
    return normalize_answer(boxed_content(text))


_CHOICE_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?\s*([A-E])\s*[\)\]]?(?![A-Za-z])", re.I),
    re.compile(r"(?:option|choice)\s*[\(\[]?([A-E])[\)\]]?(?![A-Za-z])", re.I),
    re.compile(r"\(([A-E])\)"),
    re.compile(r"(?:^|\s)([A-E])[\).:](?=\s|$)", re.M),
]


def choice(text: str) -> str | None:
    """A multiple-choice letter A–E: "answer is C", "(B)", "B)", a bare "d"."""
    stripped = text.strip().strip(".").strip()
    boxed_raw = boxed_content(text)
    if boxed_raw is not None:
        stripped_box = boxed_raw.strip().strip("()").strip()
        if re.fullmatch(r"[A-Ea-e]", stripped_box):
            return stripped_box.upper()
    if re.fullmatch(r"\(?[A-Ea-e]\)?", stripped):
        return stripped.strip("()").upper()
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return str(found[-1]).upper()
    return None


def _clean_tail(raw: str) -> str:
    """Cut "the answer is X" at the end of its sentence, keeping decimals and dates."""
    line = raw.strip().splitlines()[0] if raw.strip() else ""
    content = boxed_content(line)
    if content is not None:
        return content
    line = re.split(r"(?<!\d)\.(?!\d)|\.(?=\s|$)|;|,\s(?=[a-z])| because | since ", line)[0]
    return line.strip().strip("*").strip().strip('"').strip()


def _tail_answer(tail: str) -> str | None:
    """Normalise a tail; "12 apples" counts as the number 12 (a number and only words after)."""
    with_unit = re.fullmatch(r"(\$?-?[\d,]*\.?\d+)\s+[A-Za-z][A-Za-z\s]*", tail)
    if with_unit:
        number = normalize_number_text(with_unit.group(1))
        if number is not None:
            return number
    return normalize_answer(tail or None)


def answer_is(text: str) -> str | None:
    """ "the answer is X", "Answer: X", "Final answer: X", or a line "A: X" (last one wins)."""
    found = list(_ANSWER_IS.finditer(text))
    if found:
        return _tail_answer(_clean_tail(found[-1].group(1)))
    lines = _A_LINE.findall(text)
    if lines:
        return _tail_answer(_clean_tail(lines[-1]))
    return None


_NUMERIC_DATE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_ISO_DATE = re.compile(r"(?<![\d/-])(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?![\d/-])")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")  # fmt: skip
_WRITTEN_DATE = re.compile(
    r"\b(" + "|".join(m[:3] for m in _MONTHS) + r")[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+"
    r"(\d{4})\b",
    re.IGNORECASE,
)


def _numeric_dates(text: str) -> list[tuple[int, str]]:
    """(position, MM/DD/YYYY) of every numeric date: M/D/YYYY, and year-first YYYY-MM-DD
    (ISO, what a program's `print(date)` writes) or YYYY/MM/DD with a real month and day."""
    found = [
        (m.start(), f"{int(m[1]):02d}/{int(m[2]):02d}/{m[3]}") for m in _NUMERIC_DATE.finditer(text)
    ]
    for m in _ISO_DATE.finditer(text):
        year, _, month, day = m.groups()
        if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
            found.append((m.start(), f"{int(month):02d}/{int(day):02d}/{year}"))
    return sorted(found)


def date(text: str) -> str | None:
    """The last date in the text as MM/DD/YYYY: "Today is 5/1/2021." → "05/01/2021",
    "A: 2021-05-01" → "05/01/2021".

    Why: models answer a date question as a sentence, without zero padding or year first
    (ISO) as often as in the asked format; read as plain text those votes would split one
    answer into several. Numeric dates win over written ones ("May 1, 2021"), which are the
    fallback. Day-first dates (01.05.2021) are not read: they cannot be told from M/D."""
    found = _numeric_dates(text)
    if found:
        return found[-1][1]
    written = _WRITTEN_DATE.findall(text)
    if not written:
        return None
    name, day, year = written[-1]
    month = next(i for i, m in enumerate(_MONTHS, start=1) if m.startswith(name.lower()))
    return f"{month:02d}/{int(day):02d}/{year}"


def exact(text: str) -> str | None:
    """The whole text, normalised (case, whitespace, numbers by value)."""
    return normalize_answer(text)


def make_regex(pattern: str) -> Extractor:
    """The named group `answer` (or the only named group) of the last match of `pattern`."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"bad regex extractor pattern: {exc}") from exc
    names = list(compiled.groupindex)
    if not names:
        raise ValueError("regex extractor pattern needs a named group, e.g. (?P<answer>...)")
    group = "answer" if "answer" in names else names[0]

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        return normalize_answer(matches[-1].group(group)) if matches else None

    return extract


def _json_objects(text: str) -> list[Any]:
    """JSON values found in text: the whole text, ```json fences, then each {...} object."""
    decoder = json.JSONDecoder()
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    found: list[Any] = []
    for m in re.finditer(r"```(?:json)?\s*(.*?)```", text, re.S):
        try:
            found.append(json.loads(m.group(1)))
        except ValueError:
            continue
    if found:
        return found
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
            found.append(value)
            i = text.find("{", end)
        except ValueError:
            i = text.find("{", i + 1)
    return found


def make_json_field(field: str) -> Extractor:
    """The value at `field` ("answer", or a dotted path "result.answer") of the last JSON object."""
    if not field:
        raise ValueError("json_field extractor needs a `field` option")
    path = field.split(".")

    def extract(text: str) -> str | None:
        for value in reversed(_json_objects(text)):
            for key in path:
                if isinstance(value, dict) and key in value:
                    value = value[key]
                elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                    value = value[int(key)]
                else:
                    break
            else:
                if value is None or isinstance(value, dict | list):
                    return None
                if isinstance(value, bool):
                    return str(value).lower()
                return normalize_answer(str(value))
        return None

    return extract


_SIMPLE: dict[str, Extractor] = {
    "last_number": last_number,
    "boxed": boxed,
    "choice": choice,
    "answer_is": answer_is,
    "exact": exact,
    "date": date,
}
EXTRACTOR_NAMES = (*_SIMPLE, "regex", "json_field")
_NAME = "(" + "|".join(_SIMPLE) + ")"
CHAIN_PATTERN = rf"^{_NAME}(,{_NAME}){{0,4}}$"
"""The extractors a name alone selects (no options), chained by commas: what a request can ask
for, stated exactly (`regex` and `json_field` need options only a tenant's config can give)."""


def _single(name: str, options: dict[str, Any]) -> Extractor:
    if name in _SIMPLE:
        return _SIMPLE[name]
    if name == "regex":
        if "pattern" not in options:
            raise ValueError("regex extractor needs a `pattern` option with a named group")
        return make_regex(str(options["pattern"]))
    if name == "json_field":
        return make_json_field(str(options.get("field", "")))
    raise ValueError(f"unknown extractor {name!r}; choose from {', '.join(EXTRACTOR_NAMES)}")


def first_of(*extractors: Extractor) -> Extractor:
    """A fallback chain: the first extractor that finds an answer wins."""

    def extract(text: str) -> str | None:
        for extractor in extractors:
            answer = extractor(text)
            if answer is not None:
                return answer
        return None

    return extract


def get_extractor(name: str, **options: Any) -> Extractor:
    """The extractor called `name` (see EXTRACTOR_NAMES); "a,b" chains a then b.

    Options: `pattern` for regex (needs a named group), `field` for json_field.
    Raises ValueError for an unknown name or missing option (config validation uses this).
    """
    names = [n.strip() for n in name.split(",") if n.strip()]
    if not names:
        raise ValueError("empty extractor name")
    parts = [_single(n, options) for n in names]
    return parts[0] if len(parts) == 1 else first_of(*parts)
