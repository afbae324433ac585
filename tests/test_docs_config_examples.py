"""Every YAML config example in README.md and docs/*.md loads through the real config loader
(`server.config.load_config`), as a reader would paste it, so an example cannot drift from
the config's fields, defaults and checks. Most examples are fragments (a `ledger:` section, one
tenant): each is laid over a minimal config that supplies what it leaves out. A new example must
be listed in EXAMPLES, so none is left out by accident. The shipped configs load too.

The serving examples (bash, python) run against the live server in test_server_readme.py and
test_readme_operating.py; docs/budgets.md's first example is also checked field by field in
test_budget_config.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import AppConfig, hash_key, load_config
from server.config import _Loader as ConfigLoader  # the loader's YAML 1.2 reading of the text
from tests.support import ROOT, fenced_blocks, need

PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHARED = ROOT.parent / "shared" / "data"

# (page, index among its yaml blocks) → how it is loaded:
#   "fragment": over BASE, which supplies a served model and a tenant when the block has none;
#   a (page, index) pair: over that other example (tenants merged by id);
#   "after its sh block": whole, once the page's sh block has written the files it names.
EXAMPLES: dict[tuple[str, int], Any] = {
    ("docs/budgets.md", 0): "fragment",
    ("docs/budgets.md", 1): ("docs/budgets.md", 0),
    ("docs/deployment.md", 0): "fragment",
    ("docs/routing-replay.md", 0): "after its sh block",
    ("docs/routing.md", 0): "fragment",
    ("docs/storage.md", 0): "fragment",
    ("docs/verifiers.md", 0): "fragment",
}
BASE: dict[str, Any] = {
    "models": [{"id": "tiny-arith", "path": "models/tiny-arith"}],
    "tenants": [{"id": "base", "api_keys": [{"sha256": hash_key("base")}]}],
}
SHIPPED = ("configs/default.yaml", "configs/docker/config.yaml", "configs/docker/compose.yaml")


def yaml_blocks() -> dict[tuple[str, int], str]:
    return {
        (str(page.relative_to(ROOT)), i): code
        for page in PAGES
        for i, (_, code) in enumerate(fenced_blocks(page.read_text(), ("yaml",)))
    }


def filled(text: str) -> str:
    """The example with its placeholders filled in as a reader would: a digest for each
    `<hex>`, a secret of 16+ characters."""
    digests = iter(hash_key(str(i)) for i in range(100))
    text = re.sub(r"<sha256 hex of the admin key>|<hex>|…(?=\")", lambda _: next(digests), text)
    return text.replace("Bearer …", "Bearer s3cret").replace("<16+ characters>", "a" * 16)


def parsed(key: tuple[str, int]) -> dict[str, Any]:
    data = yaml.load(filled(yaml_blocks()[key]), Loader=ConfigLoader)
    assert isinstance(data, dict), f"{key}: not a mapping"
    return data


def laid_over(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """`fragment` over `base`: mappings merge, a tenant merges with the base's of the same id,
    anything else is replaced."""
    out = dict(base)
    for name, value in fragment.items():
        if name == "tenants" and isinstance(value, list):
            mine = {t["id"]: t for t in base.get("tenants", []) if isinstance(t, dict)}
            out[name] = [laid_over(mine.get(t["id"], {}), t) for t in value]
        elif isinstance(value, dict) and isinstance(base.get(name), dict):
            out[name] = laid_over(base[name], value)
        else:
            out[name] = value
    return out


def loaded(data: dict[str, Any], tmp_path: Path) -> AppConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def test_every_yaml_example_is_listed() -> None:
    assert set(yaml_blocks()) == set(EXAMPLES)


@pytest.mark.parametrize(
    "key", [k for k, how in EXAMPLES.items() if how == "fragment"], ids=lambda k: f"{k[0]}#{k[1]}"
)
def test_a_fragment_loads_over_a_minimal_config(key: tuple[str, int], tmp_path: Path) -> None:
    fragment = parsed(key)
    config = loaded({**BASE, **fragment}, tmp_path)
    if "ledger" in fragment:
        assert config.ledger.backend == fragment["ledger"].get("backend", "sqlite")
    for tenant in fragment.get("tenants", []):
        assert tenant["id"] in {t.id for t in config.tenants}


def test_an_example_that_adds_to_another_loads_over_it(tmp_path: Path) -> None:
    for key, how in EXAMPLES.items():
        if isinstance(how, tuple):
            base = laid_over(BASE, parsed(how))
            config = loaded(laid_over(base, parsed(key)), tmp_path)
            acme = next(t for t in config.tenants if t.id == "acme")
            assert acme.user_budgets is not None and acme.alerts is not None


def test_the_routing_replay_example_serves_what_its_calibration_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/routing-replay.md calibrates three models from their logs (its sh block, run
    verbatim on the shared routing set's files) and serves them with the YAML below it."""
    page = ROOT / "docs" / "routing-replay.md"
    logs = SHARED / "routing" / "date_cot1"
    need(logs.is_dir(), f"the shared routing set {logs}")
    (tmp_path / "logs").mkdir()
    for model in ("llama-2-13b", "gpt-3.5-turbo", "gpt-4"):
        (tmp_path / "logs" / f"{model}.jsonl").symlink_to(logs / f"{model}.jsonl")
    [(_, script)] = fenced_blocks(page.read_text(), ("sh",))
    bin_dir = Path(sys.executable).parent  # this venv's `t2serve`, on this tree's code
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    key = next(k for k, how in EXAMPLES.items() if how == "after its sh block")
    (tmp_path / "config.yaml").write_text(filled(yaml_blocks()[key]))
    monkeypatch.chdir(tmp_path)  # `curves:` paths are relative to the working directory
    config = load_config(tmp_path / "config.yaml")
    assert [m.id for m in config.models] == ["llama-2-13b", "gpt-3.5-turbo", "gpt-4"]


@pytest.mark.parametrize("path", SHIPPED)
def test_the_shipped_configs_load(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert load_config(ROOT / path).models
