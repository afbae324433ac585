"""The import graph of controller/, storage/, server/ and cli/, read from the source (AST): no
cycles; layers point server/cli → storage → controller, never back, and only storage/ talks to a
database (sqlite3, redis); a request's path points one way: router → serving → sampling →
engine/billing. Offline commands load no web stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("controller", "storage", "server", "cli")
DB_CLIENTS = ("sqlite3", "redis")
# the admin router, then the parts it includes
ADMIN_ROUTERS = (
    "server.api.admin",
    "server.api.admin_tenants",
    "server.api.admin_keys",
    "server.api.admin_spend",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module of ours that `path` imports, anywhere in the file (function bodies and
    TYPE_CHECKING blocks too: an import moved out of sight still couples the modules)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(path, known)) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_anywhere() -> None:
    assert cycles(graph()) == []


def _violations(edges: dict[str, set[str]], source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m} imports {t}"
        for m, targets in edges.items()
        if m == source or m.startswith(source + ".")
        for t in targets
        if any(t == f or t.startswith(f + ".") for f in forbidden)
    )


def test_controller_never_imports_the_server_or_the_cli() -> None:
    assert _violations(graph(), "controller", ("server", "cli")) == []


def test_controller_never_imports_storage_and_storage_never_the_server() -> None:
    edges = graph()
    assert _violations(edges, "controller", ("storage",)) == []
    assert _violations(edges, "storage", ("server", "cli")) == []


def _third_party(path: Path) -> set[str]:
    """The top-level names of every module `path` imports (absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize("package", ["controller", "server", "cli"])
def test_only_storage_imports_a_database_client(package: str) -> None:
    """controller/ is pure logic, and the server reaches its data through storage/ only."""
    talking = sorted(
        f"{path.relative_to(ROOT)} imports {client}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for client in _third_party(path) & set(DB_CLIENTS)
    )
    assert talking == []


@pytest.mark.parametrize(
    ("layer", "below_it_only"),
    [
        # each layer may import the layers after it, never the ones before
        ("server.engine", ("server.api", "server.serving", "server.sampling", "server.billing")),
        ("server.billing", ("server.api", "server.serving", "server.sampling", "server.engine")),
        ("server.sampling", ("server.api", "server.serving")),
        ("server.serving", ("server.api.router", *ADMIN_ROUTERS, "server.api.sse")),
    ],
)
def test_a_request_flows_one_way(layer: str, below_it_only: tuple[str, ...]) -> None:
    assert _violations(graph(), layer, below_it_only) == []


def test_nothing_imports_the_routers_but_the_app() -> None:
    """The app includes the two routers; the admin router includes its parts."""
    edges = graph()

    def importers(routers: set[str]) -> set[str]:
        return {m for m, targets in edges.items() if targets & routers}

    assert importers({"server.api.router", "server.api.admin"}) == {"server.app"}
    assert importers(set(ADMIN_ROUTERS[1:])) == {"server.api.admin"}


def test_offline_commands_import_no_web_stack_and_no_engine() -> None:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.app import app\n"
        "CliRunner().invoke(app, ['fit', '--help'])\n"
        "CliRunner().invoke(app, ['replay', '--help'])\n"
        "heavy = ('fastapi', 'starlette', 'uvicorn', 'vllm', 'torch', 'server.api', "
        "'server.serving', 'server.sampling', 'server.engine', 'server.app')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
