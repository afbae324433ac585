"""Every official async client a test or benchmark opens is closed by it, never left to the
garbage collector (tests/fixtures/server.py's `openai_client` says why: a dropped client once
made a request beside an in-loop server go unread)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fixtures.server import OpenedClients

ROOT = Path(__file__).resolve().parents[1]
OPENER = ROOT / "tests" / "fixtures" / "server.py"  # the fixture that closes what it opens


def _unclosed_constructions(tree: ast.AST) -> list[int]:
    """Lines that construct an AsyncOpenAI other than as an `async with` item or an argument
    of `enter_async_context(...)`."""
    managed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncWith):
            managed.update(id(item.context_expr) for item in node.items)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "enter_async_context"
        ):
            managed.update(id(arg) for arg in node.args)
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "AsyncOpenAI")
            or (isinstance(node.func, ast.Name) and node.func.id == "AsyncOpenAI")
        )
        and id(node) not in managed
    ]


def test_the_checker_tells_a_managed_client_from_a_dropped_one() -> None:
    source = """
async def f():
    async with openai.AsyncOpenAI() as a, AsyncOpenAI() as b:
        pass
    async with contextlib.AsyncExitStack() as s:
        c = await s.enter_async_context(openai.AsyncOpenAI())
    dropped = openai.AsyncOpenAI()
    return AsyncOpenAI().models
"""
    assert _unclosed_constructions(ast.parse(source)) == [7, 8]


def test_tests_and_benchmarks_close_every_async_client_they_open() -> None:
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/**/*.py")]
    found = {
        str(path.relative_to(ROOT)): lines
        for path in files
        if path != OPENER
        and (lines := _unclosed_constructions(ast.parse(path.read_text(), str(path))))
    }
    assert not found, f"open clients with `async with` or the openai_client fixture: {found}"


async def test_the_fixture_closes_every_client_it_opened() -> None:
    clients = OpenedClients()
    opened = [clients.open("http://127.0.0.1:9/v1"), clients.open("http://127.0.0.1:9/v1", "k")]
    assert not any(api.is_closed() for api in opened)
    await clients.aclose()
    assert all(api.is_closed() for api in opened)
