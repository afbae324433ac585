"""The Grafana dashboard: it parses, it is parametrised the way the issue asks, every query
names only metrics our /metrics exposes, and a live Prometheus runs every query."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server import metrics
from tests.fixtures.prometheus import (
    PrometheusFactory,
    Recorder,
    exposed_sample_names,
    promql_metric_names,
)

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "configs" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "t2serve.json"

# What Grafana substitutes before a query reaches Prometheus.
VARIABLES = {
    "${datasource}": "prometheus",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$tenant": ".*",
}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def test_dashboard_parses_with_datasource_and_tenant_variables() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    tenant = variables["tenant"]
    assert tenant["type"] == "query" and tenant["includeAll"] and tenant["multi"]
    assert "t2_spend_total" in tenant["definition"]
    assert tenant["datasource"]["uid"] == "${datasource}"
    # Every panel and target goes through the datasource variable, never a fixed uid.
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_dashboard_has_every_panel_the_issue_lists() -> None:
    titles = " | ".join(panel["title"].lower() for panel in _panels(_dashboard()))
    for wanted in [
        "spend rate",
        "spend per tenant",
        "burn-down vs ideal",
        "λ per tenant",
        "samples per request",
        "waves per request",
        "stop reasons",
        "vote agreement",
        "latency and time to first token",
        "tokens per second",
        "rejections",
        "engine queue",
    ]:
        assert wanted in titles, wanted
    heatmaps = {p["title"] for p in _panels(_dashboard()) if p["type"] == "heatmap"}
    assert heatmaps == {"Samples per request", "Waves per request"}
    latency = next(p for p in _panels(_dashboard()) if p["title"].startswith("Latency"))
    exprs = " ".join(t["expr"] for t in latency["targets"])
    for quantile in ("0.5", "0.95"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(t2_request_duration" in exprs
        assert f"histogram_quantile({quantile}, sum by (le) (rate(t2_time_to_first_token" in exprs


def test_every_query_names_only_metrics_we_define() -> None:
    ours = metrics.metric_names()
    for title, expr in _queries(_dashboard()):
        names = promql_metric_names(substitute(expr))
        assert names, f"{title}: no metric in {expr!r}"
        for name in names:
            if name.startswith("vllm:"):
                continue  # checked against a live engine's exposition in the engine tests
            assert name in ours, f"{title}: {name} is not defined in server/metrics.py"


def test_provisioning_points_grafana_at_the_dashboard_and_prometheus() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/t2serve.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


@pytest.mark.prometheus
def test_live_prometheus_accepts_and_answers_every_query(
    prometheus: PrometheusFactory, recorder: Callable[..., Recorder]
) -> None:
    """Prometheus scrapes an exposition of known traffic; every panel query (with Grafana's
    variables substituted) parses and evaluates, as an instant and as a range query, and every
    query on t2_* metrics returns data."""
    rec = recorder(["alpha", "beta"], 3, serve=True, configured=["alpha", "beta"])
    prom = prometheus(targets=[rec.target])
    prom.wait_for_scrape(after=time.time())
    time.sleep(2.5)  # two more scrapes, so rate() and increase() have two points
    empty = []
    for title, expr in _queries(_dashboard()):
        query = substitute(expr)
        prom.query_range(query, seconds=30, step=1)  # raises on any PromQL error
        result = prom.query(query)
        if not result and not any(n.startswith("vllm:") for n in promql_metric_names(query)):
            empty.append((title, query))
    assert not empty, f"queries with no data: {empty}"
    # The tenant variable's query lists exactly the configured tenants.
    tenants = {r["tenant"] for r in prom.api("series", **{"match[]": "t2_spend_total"})}
    assert tenants == {"alpha", "beta"}


def test_exposed_names_cover_the_dashboard_in_a_recorded_exposition(
    recorder: Callable[..., Recorder],
) -> None:
    """The t2_* names the dashboard uses are really in an exposition, not only in definitions."""
    rec = recorder(["alpha"], 2, serve=True)
    exposed = exposed_sample_names(rec.exposition())
    for title, expr in _queries(_dashboard()):
        for name in promql_metric_names(substitute(expr)):
            if not name.startswith("vllm:"):
                assert name in exposed, f"{title}: {name} missing from /metrics"


@pytest.mark.prometheus
def test_the_ideal_burn_line_is_drawn_for_calendar_windows_only(
    promtool: Callable[..., Any], tmp_path: Path
) -> None:
    """A rolling window never starts or resets: the ideal line from its bounds (the last window
    length up to its figures) was 0 at once, an alarm-red "burning too fast" for any spend. Its
    own line, the share not spent over the last window length, stays. Evaluated by promtool on
    synthetic series as the server publishes them."""
    panel = next(p for p in _panels(_dashboard()) if p["title"].startswith("Budget burn-down"))
    lines = {t["legendFormat"].rsplit(" ", 1)[1]: substitute(t["expr"]) for t in panel["targets"]}

    def window(tenant: str, name: str, rolling: bool) -> list[dict[str, str]]:
        labels = f'tenant="{tenant}",window="{name}",instance="a:8000",job="t2serve"'
        start, end = ("-3600+60x30", "0+60x30") if rolling else ("0+0x30", "86400+0x30")
        return [
            {"series": f"t2_budget_limit{{{labels}}}", "values": "100+0x30"},
            {"series": f"t2_budget_spent{{{labels}}}", "values": "30+0x30"},
            {"series": f"t2_budget_window_start_timestamp_seconds{{{labels}}}", "values": start},
            {"series": f"t2_budget_window_end_timestamp_seconds{{{labels}}}", "values": end},
            {"series": f"t2_budget_rolling{{{labels}}}", "values": f"{int(rolling)}+0x30"},
        ]

    both = [
        {"labels": '{tenant="cal",window="day"}', "value": 0.7},
        {"labels": '{tenant="roll",window="hour"}', "value": 0.7},
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [*window("cal", "day", False), *window("roll", "hour", True)],
                "promql_expr_test": [
                    {"expr": lines["left"], "eval_time": "10m", "exp_samples": both},
                    {
                        "expr": lines["ideal"],
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{tenant="cal",window="day"}', "value": 1 - 600 / 86400}
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "burn_down_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
