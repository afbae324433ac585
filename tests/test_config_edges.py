"""Config and start-up edges (a config audit): each wrong field is refused naming its dotted
path, in one line and exit 2 from `t2serve serve`, never read as something else or ignored."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli.serve import register
from server.app import DrainingServer, create_app, enable_reload
from server.config import ConfigError, hash_key, load_config, parse_config
from tests.fakes import ScriptedEngine, cycle

KEY = {"sha256": hash_key("k")}
MINIMAL: dict[str, Any] = {
    "models": [{"id": "m", "path": "models/m"}],
    "tenants": [{"id": "acme", "api_keys": [KEY]}],
}
REAL = "models/tiny-chain-31k"  # weights that exist: `serve` gets past its checks
RM = "models/tiny-chain-rm"


def _tenant(**fields: Any) -> dict[str, Any]:
    return {"tenants": [{"id": "acme", "api_keys": [KEY], **fields}]}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"server": {"log_level": "verbose"}}, "server.log_level"),  # serve raised on it
        ({"server": {"log_level": ""}}, "server.log_level"),
        ({"server": {"host": ""}}, "server.host"),  # "" bound every interface
        ({"server": {"port": True}}, "server.port"),  # was port 1
        ({"server": {"max_body_bytes": "4096"}}, "server.max_body_bytes"),
        ({"demo": "yes"}, "demo"),
        (_tenant(max_cost=True), "tenants.0.max_cost"),  # was 1.0
        (_tenant(max_samples=True), "tenants.0.max_samples"),  # was 1
        (_tenant(allow_raising_caps="yes"), "tenants.0.allow_raising_caps"),
        ({"defaults": {"max_tokens": True}}, "defaults.max_tokens"),
        ({"engine": {"model_path": "models/other"}}, "engine: model_path"),
        (
            {"models": [{"id": "m", "path": "models/m", "engine": {"model_path": "x"}}]},
            "models.0.engine",
        ),
        ({"engine": {"dtype": "float33"}}, "engine.dtype"),
        ({"engine": {"max_num_seqs": True}}, "max_num_seqs"),  # was 1
        ({"engine": {"enforce_eager": "no"}}, "enforce_eager"),  # was False
        ({"engine": {"block_size": "64"}}, "block_size"),  # was 64
        ({"engine": {"remote": {"retries": True}}}, "remote.retries"),  # was 1
        (
            {"models": [{"id": "m", "path": "models/m", "engine": {"max_model_len": "256"}}]},
            "models.0.engine (m): max_model_len",
        ),
        ({"engine": {"remote": {"urls": ["http://h:8000/v1"]}}}, "remote.urls"),
        ({"ledger": {"path": ""}}, "ledger.path"),
        ({"ledger": {"path": "."}}, "ledger.path"),  # a folder: every metered request a 500
        ({"verifier_models": [{"id": "m", "path": RM}]}, "verifier_models.0.id"),
        (
            {"verifier_models": [{"id": "rm", "path": RM}, {"id": "rm", "path": RM}]},
            "verifier_models.1.id",
        ),
    ],
)
def test_a_field_read_as_something_else_is_refused_by_name(
    patch: dict[str, Any], field: str
) -> None:
    """Each of these loaded before, coerced, overridden or ignored."""
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **patch})
    assert field in str(err.value)


def test_json_integers_and_strict_fields_still_load() -> None:
    """Strictness refuses coercion, not JSON's 8000.0 integers or a path's string."""
    cfg = parse_config({**MINIMAL, "server": {"port": 8000.0, "log_level": "debug"}})
    assert cfg.server.port == 8000 and isinstance(cfg.server.port, int)
    assert parse_config({**MINIMAL, **_tenant(max_samples=4.0)}).tenants[0].max_samples == 4
    engine = {"max_num_seqs": 8.0, "kv_cache_memory_fraction": 1, "block_size": 64}
    assert parse_config({**MINIMAL, "engine": engine}).engine == engine


def test_a_check_across_fields_reads_as_one_plain_line() -> None:
    """A model-level check has no field path of its own: its message names the fields, with
    no "(top level)" or pydantic's "Value error," in front."""
    twice = {**MINIMAL, "models": [{"id": "m", "path": "a"}, {"id": "m", "path": "b"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(twice)
    assert str(err.value) == "config: models: duplicate model or route id(s): m"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_exponent_numbers_are_floats(tmp_path: Path) -> None:
    """YAML 1.1 read `4e17` and `1.6e7` as strings, which strict budget fields refuse."""
    tenant = {
        "id": "acme",
        "api_keys": [KEY],
        "budgets": {"month": {"limit": "LIMIT", "unit": "flops"}},
    }
    text = yaml.safe_dump({**MINIMAL, "tenants": [tenant]}).replace("LIMIT", "4e17")
    cfg = load_config(_write(tmp_path / "c.yaml", text))
    month = cfg.tenants[0].budgets.month  # type: ignore[union-attr]
    assert month is not None and month.limit == 4e17


def test_a_key_given_twice_is_refused_naming_its_line(tmp_path: Path) -> None:
    """YAML 1.1 let the last `budgets:` win, silently dropping the first."""
    text = yaml.safe_dump(MINIMAL) + "server:\n  port: 9000\n  port: 9001\n"
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path / "c.yaml", text))
    message = str(err.value)
    assert "duplicate key 'port'" in message and f"line {text.count(chr(10))}" in message
    assert "\n" not in message


def test_bytes_that_are_not_utf8_are_one_config_error(tmp_path: Path) -> None:
    """A UnicodeDecodeError escaped: a traceback at start, a 500 from /admin/reload."""
    bad = tmp_path / "c.yaml"
    bad.write_bytes(yaml.safe_dump(MINIMAL).encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    (tmp_path / "t.yaml").write_bytes(b"- id: acme\n  # caf\xe9\n")
    main = _write(
        tmp_path / "m.yaml", yaml.safe_dump({**MINIMAL, "tenants": {"include": "t.yaml"}})
    )
    with pytest.raises(ConfigError, match=r"tenants.include: .*t.yaml: not UTF-8"):
        load_config(main)


def test_an_included_tenants_file_holds_tenants_only_and_errors_name_it(tmp_path: Path) -> None:
    """Other keys there were ignored, and its errors named only the main config."""
    main = _write(
        tmp_path / "m.yaml", yaml.safe_dump({**MINIMAL, "tenants": {"include": "t.yaml"}})
    )
    tenant = {"id": "acme", "api_keys": [KEY]}
    _write(tmp_path / "t.yaml", yaml.safe_dump({"tenants": [tenant], "server": {"port": 1}}))
    with pytest.raises(ConfigError, match=r"only 'tenants'.*server"):
        load_config(main)
    _write(tmp_path / "t.yaml", yaml.safe_dump({"tenants": [{**tenant, "max_samples": 0}]}))
    with pytest.raises(ConfigError) as err:
        load_config(main)
    assert "t.yaml" in str(err.value) and "tenants.0.max_samples" in str(err.value)


def test_reload_refuses_a_timeout_the_running_hold_ttl_would_not_outlive(tmp_path: Path) -> None:
    """The running ledger keeps its TTL (180 s from a 120 s timeout) until a restart, while a
    reloaded timeout applied at once: a 600 s wave's hold would lapse at 180 s."""
    data = {
        **MINIMAL,
        "ledger": {"backend": "sqlite", "path": str(tmp_path / "l.sqlite")},
        "server": {"request_timeout_s": 120},
    }
    path = _write(tmp_path / "c.yaml", yaml.safe_dump(data))
    app = create_app(load_config(path), engine=ScriptedEngine(cycle("A: 1")))
    enable_reload(app, path)
    state = app.state.t2
    _write(path, yaml.safe_dump({**data, "server": {"request_timeout_s": 600}}))
    with pytest.raises(ConfigError, match=r"request_timeout_s \(600\) must stay below"):
        state.reload_from_file()
    assert state.config.server.request_timeout_s == 120
    _write(path, yaml.safe_dump({**data, "server": {"request_timeout_s": 100}}))
    _, waiting = state.reload_from_file()  # its default TTL (160) is no ledger change
    assert state.config.server.request_timeout_s == 100 and waiting == []


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """These configs must stop `serve` before uvicorn runs: were one to get through, running
    would start a real vLLM engine (the lifespan) and listen; fail at once instead."""

    def run(*_: object, **__: object) -> None:
        raise AssertionError("serve got as far as running the server")

    monkeypatch.setattr(DrainingServer, "run", run)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def _serve(
    tmp_path: Path, data: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> Any:
    config = _write(tmp_path / "serve.yaml", yaml.safe_dump(data))
    return CliRunner().invoke(_cli(), ["serve", "--config", str(config), *args], env=env)


def _servable(tmp_path: Path) -> dict[str, Any]:
    """A config `serve` accepts: real weights, a ledger in tmp_path."""
    ledger = {"backend": "sqlite", "path": str(tmp_path / "var" / "l.sqlite")}
    return {**MINIMAL, "models": [{"id": "m", "path": REAL}], "ledger": ledger}


def _one_error_line(result: Any, start: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {start}"), result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_serve_refuses_a_malformed_admin_key_digest_in_the_environment(tmp_path: Path) -> None:
    """It raised inside the lifespan: 'startup failed', exit 3."""
    env = {"T2SERVE_ADMIN_KEY": "sha256:zz"}
    _one_error_line(_serve(tmp_path, _servable(tmp_path), env=env), "T2SERVE_ADMIN_KEY")


def test_serve_refuses_a_model_path_without_weights(tmp_path: Path) -> None:
    """The in-process engine failed in the background; /readyz stayed 503 with exit 0."""
    data = {**_servable(tmp_path), "models": [{"id": "m", "path": str(tmp_path / "none")}]}
    result = _serve(tmp_path, data)
    _one_error_line(result, str(tmp_path / "serve.yaml"))
    assert "models.0.path: no model at" in result.output


def test_serve_refuses_a_ledger_file_sqlite_cannot_open(tmp_path: Path) -> None:
    """Every metered request was a 500 instead."""
    data = _servable(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "l.sqlite").write_text("not a database " * 20)
    _one_error_line(_serve(tmp_path, data), "ledger.path: cannot open")


def test_serve_refuses_a_port_in_use_before_starting_engines(tmp_path: Path) -> None:
    """uvicorn bound only after the lifespan (the engines' ~30 s start), then exited 3."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = {**_servable(tmp_path), "server": {"port": port}}
        _one_error_line(_serve(tmp_path, data), f"server.port: 127.0.0.1:{port} is in use")
        result = _serve(tmp_path, _servable(tmp_path), "--port", str(port))
        _one_error_line(result, f"--port: 127.0.0.1:{port} is in use")


def _as_a_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode bits bind root too, as they bind the server's user (root's `os.access` ignores
    them, and these tests may run as root)."""
    if os.geteuid() != 0:
        return

    def access(path: Any, mode: int, **_: Any) -> bool:
        bits = Path(path).stat().st_mode
        need = [(os.W_OK, stat.S_IWUSR), (os.R_OK, stat.S_IRUSR), (os.X_OK, stat.S_IXUSR)]
        return all(bits & bit for flag, bit in need if mode & flag)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("where", ["folder under a file", "read-only folder", "read-only file"])
def test_serve_refuses_a_pending_settles_journal_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The journal is written only when the store fails: a place it cannot be written was
    found then, in an outage, and the settle fell back to being retried once at close."""
    _as_a_user(monkeypatch)
    folder = tmp_path / "journal"
    folder.mkdir()
    journal = folder / "pending.sqlite"
    if where == "folder under a file":
        (folder / "file").write_text("")
        journal = folder / "file" / "pending.sqlite"
    elif where == "read-only file":
        sqlite3.connect(journal).close()
        journal.chmod(0o444)
    data = _servable(tmp_path)
    data["ledger"]["pending_settles_path"] = str(journal)
    if where == "read-only folder":
        folder.chmod(0o555)
    try:
        _one_error_line(_serve(tmp_path, data), "ledger.pending_settles_path: ")
    finally:
        folder.chmod(0o755)
    assert journal.exists() == (where == "read-only file")  # never made by the check


def test_serve_checks_the_default_journal_without_making_it(tmp_path: Path) -> None:
    """A journal that can be written passes, and the check does not make the file (the
    default's, beside the ledger): a server whose store never fails never has one."""
    result = _serve(tmp_path, _servable(tmp_path))
    assert isinstance(result.exception, AssertionError), result.output  # it got to running
    assert (tmp_path / "var" / "l.sqlite").exists()
    assert not (tmp_path / "var" / "pending-settles.sqlite").exists()


def test_serve_checks_a_journal_in_folders_yet_to_be_made_without_making_them(
    tmp_path: Path,
) -> None:
    """Nor its folders: a server whose store never fails (a Redis ledger, say) leaves no
    folder behind for a journal it never writes."""
    data = _servable(tmp_path)
    data["ledger"]["pending_settles_path"] = str(tmp_path / "a" / "b" / "pending.sqlite")
    result = _serve(tmp_path, data)
    assert isinstance(result.exception, AssertionError), result.output  # it got to running
    assert not (tmp_path / "a").exists()
