"""Verifier config: each kind's fields, and a verifier naming an unknown model or checker is
refused at load with the dotted path of the field."""

from __future__ import annotations

from typing import Any

import pytest

from server.config import ConfigError, parse_config


def config(*verifiers: dict[str, Any], verifier_models: list[dict[str, Any]] | None = None) -> Any:
    return parse_config(
        {
            "demo": True,
            "models": [{"id": "gen", "path": "models/tiny-chain-31k"}],
            "verifier_models": verifier_models or [],
            "tenants": [
                {"id": "a", "api_keys": [{"plain": "k"}], "verifiers": list(verifiers)},
            ],
        },
        "test",
    )


def test_each_kind_loads_and_is_named() -> None:
    cfg = config(
        {"kind": "reward_model", "model": "rm"},
        {"kind": "judge", "model": "gen", "read": "answer", "template": "{question}"},
        {"kind": "checker", "checker": "chain_steps", "stop_at": 0.9},
        {"url": "http://127.0.0.1:9/score", "name": "ext"},
        verifier_models=[{"id": "rm", "url": "http://127.0.0.1:9/v1"}],
    )
    tenant = cfg.tenants[0]
    assert [v.label for v in tenant.verifier_list()] == ["rm", "gen", "chain_steps", "ext"]
    assert tenant.verifier_named(None) is tenant.verifiers[0]
    named = tenant.verifier_named("chain_steps")
    assert named is not None and named.stop_at == 0.9


@pytest.mark.parametrize(
    ("verifier", "models", "field"),
    [
        ({"kind": "checker", "checker": "nope"}, None, "tenants.0.verifiers.0.checker"),
        ({"kind": "reward_model", "model": "nope"}, None, "tenants.0.verifiers.0.model"),
        (
            {"kind": "judge", "model": "rm"},
            [{"id": "rm", "url": "http://h/v1"}],
            "verifiers.0.model",
        ),
        ({"kind": "reward_model"}, None, "tenants.0.verifiers.0"),
        ({"kind": "judge", "model": "gen", "pattern": "("}, None, "tenants.0.verifiers.0.pattern"),
        ({"kind": "oracle", "model": "gen"}, None, "tenants.0.verifiers.0.kind"),
    ],
)
def test_a_bad_verifier_is_refused_naming_the_field(
    verifier: dict[str, Any], models: list[dict[str, Any]] | None, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(verifier, verifier_models=models)
    assert field in str(err.value)


def test_unknown_reward_model_lists_what_is_configured() -> None:
    with pytest.raises(
        ConfigError,
        match=r"tenants\.0\.verifiers\.1\.model.*configured "
        r"verifier_models: rm",
    ):
        config(
            {"kind": "checker", "checker": "chain_steps"},
            {"kind": "reward_model", "model": "rn"},
            verifier_models=[{"id": "rm", "url": "http://127.0.0.1:9/v1"}],
        )


def test_a_reward_model_needs_weights_or_a_url_and_names_are_unique() -> None:
    with pytest.raises(ConfigError, match=r"verifier_models\.0\.path"):
        config(verifier_models=[{"id": "rm", "path": "models/none-here"}])
    with pytest.raises(ConfigError, match=r"verifier_models\.0"):
        config(verifier_models=[{"id": "rm"}])
    with pytest.raises(ConfigError, match="duplicate name"):
        config(
            {"kind": "checker", "checker": "chain_steps"},
            {"kind": "checker", "checker": "chain_steps"},
        )


def test_the_score_map_is_read_under_its_name_and_its_older_one() -> None:
    shipped = "models/tiny-chain-rm/score_map.json"
    for key in ("score_map", "calibration"):
        cfg = config({"kind": "checker", "checker": "chain_steps", key: shipped, "stop_at": 0.9})
        assert cfg.tenants[0].verifiers[0].score_map == shipped
    with pytest.raises(ConfigError, match=r"verifiers\.0\.score_map: .*no score map file"):
        config({"kind": "checker", "checker": "chain_steps", "score_map": "nowhere.json"})
