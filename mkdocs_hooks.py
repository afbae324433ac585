"""mkdocs hooks: the docs link to repository files outside docs/ (`../models/x/README.md`, as
GitHub renders them) and the benchmarks page includes BENCHMARKS.md, which stays at the root.
mkdocs cannot link outside its docs folder, so these links become code spans naming the path;
a path that does not exist is a warning, which `mkdocs build --strict` turns into a failure."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DOCS = ROOT / "docs"
INCLUDE = re.compile(r"^<!-- include: (?P<path>[^ ]+) -->$", re.M)
REPO_LINK = re.compile(r"\[(?P<label>[^\]]+)\]\(\.\./(?P<path>[^)#]+)\)")
ROOT_LINK = re.compile(r"\]\((?!https?:|#)(?P<path>[^)]+)\)")
log = logging.getLogger("mkdocs.hooks.repo_links")


def rebase_root_links(markdown: str) -> str:
    """Links in a root file (`docs/x.png`, `models/...`) rewritten as seen from docs/."""

    def rebase(m: re.Match[str]) -> str:
        path = m.group("path")
        return f"]({path.removeprefix('docs/')})" if path.startswith("docs/") else f"](../{path})"

    return ROOT_LINK.sub(rebase, markdown)


def include_root_files(markdown: str, page_path: str) -> str:
    """`<!-- include: BENCHMARKS.md -->` on a line of its own: the root file's text, in place."""

    def include(m: re.Match[str]) -> str:
        source = ROOT / m.group("path")
        if not source.is_file():
            log.warning("%s includes %s, which does not exist", page_path, m.group("path"))
            return ""
        return rebase_root_links(source.read_text())

    return INCLUDE.sub(include, markdown)


def repo_links_to_paths(markdown: str, page_path: str) -> str:
    """`[label](../path)` → `label` (`path`): the site cannot serve repository files."""

    def to_path(m: re.Match[str]) -> str:
        label, path = m.group("label"), m.group("path")
        if not (DOCS / ".." / path).exists():
            log.warning("%s links to ../%s, which does not exist", page_path, path)
        if label.strip("`").rstrip("/") == path.rstrip("/"):
            return f"`{path}`"
        return f"{label} (`{path}`)"

    return REPO_LINK.sub(to_path, markdown)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    page_path = str(page.file.src_uri)
    return repo_links_to_paths(include_root_files(markdown, page_path), page_path)
