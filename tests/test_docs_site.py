"""The docs site builds with `mkdocs build --strict` (a broken link, a missing page in the nav or
a repository path that does not exist fails it), and the README stays a front door: short, and
every file it links to exists."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, need

README_MAX_LINES = 220


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    need(importlib.util.find_spec("material") is not None, "mkdocs-material")
    done = build(tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "Ledger throughput" in benchmarks  # BENCHMARKS.md is included, not just linked
    serving = (tmp_path / "site" / "serving" / "index.html").read_text()
    assert "Request fields" in serving


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    need(importlib.util.find_spec("material") is not None, "mkdocs-material")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](nowhere.md) and [src](../no/such/file.py)\n")
    config = tmp_path / "mkdocs.yml"
    text = (ROOT / "mkdocs.yml").read_text()
    text = re.sub(r"(?ms)^nav:.*", "", text).replace("docs_dir: docs", f"docs_dir: {docs}")
    config.write_text(text.replace("- mkdocs_hooks.py", f"- {ROOT / 'mkdocs_hooks.py'}"))
    done = build(tmp_path / "site", config)
    assert done.returncode != 0
    assert "nowhere.md" in done.stdout + done.stderr
    assert "../no/such/file.py, which does not exist" in done.stdout + done.stderr


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\((?!https?:)([^)#]+)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    for page in re.findall(r"\]\(docs/([a-z-]+\.md)", text):
        assert f": {page}" in (ROOT / "mkdocs.yml").read_text(), f"{page} is not in the nav"
