"""docs/budgets.md's examples of what the admin routes return are the real shapes: each, marked
`<!-- admin-response: Model -->`, validates as its model of server/api/admin_responses.py and
dumps back to itself, so a field the docs invent, miss or misplace fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from server.api import admin_responses

DOC = Path(__file__).resolve().parents[1] / "docs" / "budgets.md"
EXAMPLE = re.compile(r"<!-- admin-response: (\w+) -->\n```json\n(.*?)\n```", re.DOTALL)
EXCLUDE_NONE = {"SpendReport"}  # its route leaves the other groups' fields out


def examples() -> list[tuple[str, str]]:
    return EXAMPLE.findall(DOC.read_text())


def test_the_docs_show_every_admin_response_shape() -> None:
    shown = {name for name, _ in examples()}
    assert shown == {"TenantList", "TenantReport", "Reloaded", "KeyList", "KeyCreated",
                     "SpendLogPage", "SpendReport"}  # fmt: skip
    reports = [json.loads(body)["metered"] for name, body in examples() if name == "TenantReport"]
    assert sorted(reports) == [False, True]  # both shapes of the report


@pytest.mark.parametrize("name,body", examples(), ids=[n for n, _ in examples()])
def test_an_example_is_its_model_field_for_field_in_order(name: str, body: str) -> None:
    model: type[BaseModel] = getattr(admin_responses, name)
    example: Any = json.loads(body)
    parsed = model.model_validate(example)
    dumped = parsed.model_dump(mode="json", exclude_none=name in EXCLUDE_NONE)
    assert dumped == example
    assert json.dumps(dumped) == json.dumps(example)  # key order too (floats: same text)
