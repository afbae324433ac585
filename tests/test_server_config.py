"""Config file and auth: bad files are refused naming the field; keys map to tenants by hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli.serve import register
from controller.budget.admin_state import StoredKey, StoredTenant
from server.api.errors import APIError
from server.auth import KeyRing
from server.config import CONFIG_ENV, ConfigError, hash_key, load_config, parse_config

MINIMAL = {
    "models": [{"id": "m", "path": "models/m"}],
    "tenants": [{"id": "acme", "api_keys": [{"sha256": hash_key("k1")}]}],
}


def test_shipped_default_config_is_valid_demo() -> None:
    cfg = load_config("configs/default.yaml")
    assert cfg.demo and cfg.server.host == "127.0.0.1" and cfg.server.port == 8000
    assert cfg.ledger.backend == "sqlite" and cfg.ledger.path.startswith("var/")
    assert KeyRing(cfg).tenant_for_key("demo-key") is not None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (
            {"tenants": [{"id": "a", "api_keys": [{"sha256": "nothex"}]}]},
            "tenants.0.api_keys.0.sha256",
        ),
        ({"tenants": [{"id": "a", "api_keys": [{"plain": "k"}]}]}, "tenants.0.api_keys.0.plain"),
        (
            {"tenants": [{"id": "a", "api_keys": [{"sha256": hash_key("x")}], "max_samples": 0}]},
            "tenants.0.max_samples",
        ),
        (
            {"tenants": [{"id": "a", "api_keys": [{"sha256": hash_key("x")}], "polcy": "t2"}]},
            "tenants.0.polcy",
        ),
        (
            {
                "tenants": [
                    {
                        "id": "a",
                        "api_keys": [{"sha256": hash_key("x")}],
                        "verifier": {"url": "scorer.internal/score"},
                    }
                ]
            },
            "tenants.0.verifier.url",
        ),
        ({"defaults": {"policy": "t2:foo=1"}}, "defaults.policy"),
        ({"defaults": {"aggregator": "majorty"}}, "defaults.aggregator"),
        ({"defaults": {"extractor": "nope"}}, "defaults.extractor"),
        (
            {"tenants": [{"id": "a", "api_keys": [{"sha256": hash_key("x")}], "policy": "t3"}]},
            "tenants.0.policy",
        ),
        (  # a route's router takes λ only: first_wave would be ignored
            {"routes": [{"id": "auto", "route": ["m"], "policy": "t2:lam=0.02,first_wave=2"}]},
            "routes.0.policy",
        ),
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"defaults": {"max_tokens": -1}}, "defaults.max_tokens"),
        ({"models": []}, "models"),
    ],
)
def test_bad_config_names_the_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **patch})
    assert field in str(err.value)


def test_a_route_policy_of_another_family_says_a_route_runs_t2() -> None:
    # a route runs the t2 router: `online` is refused for that, not as "options ignored"
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "routes": [{"id": "auto", "route": ["m"], "policy": "online"}]})
    assert "routes.0.policy" in str(err.value)
    assert "must be 't2' or 't2:...', not 'online'" in str(err.value)


def test_duplicate_keys_refused() -> None:
    key = {"sha256": hash_key("same")}
    tenants = [{"id": "a", "api_keys": [key]}, {"id": "b", "api_keys": [key]}]
    with pytest.raises(ConfigError, match="tenants"):
        parse_config({**MINIMAL, "tenants": tenants})


def test_env_var_selects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "server": {"port": 9123}}))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_config().server.port == 9123
    assert load_config("configs/default.yaml").server.port == 8000  # --config wins


def test_keyring_hashes_and_rejects() -> None:
    ring = KeyRing(parse_config(MINIMAL))
    assert ring.authenticate("Bearer k1").id == "acme"
    for header in (None, "", "Bearer", "Basic k1", "Bearer wrong"):
        with pytest.raises(APIError) as err:
            ring.authenticate(header)
        assert err.value.status == 401


def test_keyring_refuses_a_shadowed_api_tenants_keys_only() -> None:
    """While the file defines the id of a stored (API) tenant, the keys made for that tenant
    (under its id since it was made) are refused; a stored key of the id from before it, made
    while the id was the file's, and the file's own key still authenticate as the file's."""
    api_tenant = StoredTenant("acme", {}, created_at=100.0)
    older = StoredKey(hash_key("older"), "acme", "t2-older", "a", created_at=50.0)
    issued = StoredKey(hash_key("issued"), "acme", "t2-issued", "b", created_at=150.0)
    ring = KeyRing(parse_config(MINIMAL), [older, issued], clock=lambda: 200.0,
                   shadowed=[api_tenant])  # fmt: skip
    assert ring.authenticate("Bearer k1").id == "acme"
    assert ring.authenticate("Bearer older").id == "acme"
    with pytest.raises(APIError) as err:
        ring.authenticate("Bearer issued")
    assert err.value.status == 401 and "config file" in err.value.message
    assert ring.tenant_for_key("issued") is None
    unshadowed = KeyRing(parse_config(MINIMAL), [older, issued], clock=lambda: 200.0)
    assert unshadowed.authenticate("Bearer issued").id == "acme"


def _cli() -> typer.Typer:
    """`serve` in a command group, as in `t2serve` (a lone command would become the root)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_serve_with_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cli = _cli()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "server": {"port": -5}}))
    result = CliRunner().invoke(cli, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "server.port" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_serve_with_a_route_it_cannot_build_exits_2_with_one_line(tmp_path: Path) -> None:
    """A route is built when the app is: a member whose curves have no entry for it (here
    the shipped tiny-arith weights served as `a`) was a traceback and exit 1."""
    models = [
        {"id": "a", "path": "models/tiny-arith"},
        {"id": "b", "path": str(tmp_path / "b")},
        {"id": "r", "route": ["a", "b"]},
    ]
    config = tmp_path / "route.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "models": models}))
    result = CliRunner().invoke(_cli(), ["serve", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "routes.0 (r): model 'a': curves file" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_serve_with_a_ledger_folder_it_cannot_make_exits_2_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the ledger's folder should be
    ledger = {"backend": "sqlite", "path": str(blocker / "ledger.sqlite")}
    config = tmp_path / "ledger.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "ledger": ledger}))
    result = CliRunner().invoke(_cli(), ["serve", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ledger.path: cannot make its folder")
    assert "Traceback" not in result.output


TWO = {
    "models": [
        {"id": "small", "path": "models/small"},
        {"id": "large", "path": "models/large"},
        {"id": "auto", "route": ["small", "large"]},
    ],
}
DAY = {"day": {"limit": 1.0, "unit": "currency"}}


def _tenant(**fields: object) -> dict[str, object]:
    return {"tenants": [{"id": "a", "api_keys": [{"sha256": hash_key("x")}], **fields}]}


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        (_tenant(models=["small", "lage"]), "tenants.0.models.1: unknown model 'lage'"),
        (_tenant(prices={"models": {"smal": {"prompt_per_1m": 1}}}),
         "tenants.0.prices.models.smal: unknown model 'smal'"),
        (_tenant(prices={"models": {"auto": {"prompt_per_1m": 1}}}),
         "tenants.0.prices.models.auto: 'auto' is a route"),
        (_tenant(models=["auto"], budgets=DAY,
                 prices={"models": {"small": {"prompt_per_1m": 1}}}),
         "tenants.0.prices.models: no price for 'large'"),
    ],
)  # fmt: skip
def test_a_tenant_names_configured_models_and_prices_what_it_may_bill(
    tenant: dict[str, object], message: str
) -> None:
    """A misspelt price key leaves the model it meant at price 0: with a currency budget the
    tenant would use it for free, so every model it may draw from needs a price."""
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **TWO, **tenant})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "tenant",
    [
        _tenant(models=["small"], budgets=DAY, prices={"models": {"small": {}}}),  # 0: free
        _tenant(budgets=DAY, prices={"models": {"*": {"prompt_per_1m": 1}}}),
        _tenant(budgets={"day": {"limit": 1e15, "unit": "flops"}}),  # FLOPs need no price
        _tenant(prices={"models": {"small": {"prompt_per_1m": 1}}}),  # no budget: metered only
    ],
)
def test_priced_or_unmetered_tenants_load(tenant: dict[str, object]) -> None:
    assert parse_config({**MINIMAL, **TWO, **tenant}).tenants[0].id == "a"


def test_a_judge_verifiers_model_needs_a_price_under_a_currency_budget() -> None:
    """A judge's calls are billed like generation, at its model's price."""
    judge = {"kind": "judge", "model": "large"}
    tenant = _tenant(models=["small"], budgets=DAY, verifier=judge,
                     prices={"models": {"small": {"prompt_per_1m": 1}}})  # fmt: skip
    with pytest.raises(ConfigError, match="no price for 'large'"):
        parse_config({**MINIMAL, **TWO, **tenant})
