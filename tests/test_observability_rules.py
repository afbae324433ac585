"""The shipped Prometheus config and alert rules: promtool accepts them, and the alerts fire
exactly when the issue says (promtool's rule unit tests on synthetic series)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.prometheus import PrometheusFactory, Recorder

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "t2serve.yml"

Promtool = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.prometheus


def test_promtool_accepts_the_config(promtool: Promtool) -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # the relative glob really finds the rules


def test_promtool_accepts_the_rules(promtool: Promtool) -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_required_alert_is_shipped() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert {
        "T2BudgetBurn80Early",
        "T2BudgetExhaustedEarly",
        "T2BudgetBurn80Rolling",
        "T2BudgetExhaustedRolling",
        "T2BudgetRejections",
        "T2HighErrorRate",
        "T2LatencyP95OverSLO",
        "T2EngineNotReady",
        "T2SettlesPending",
    } <= alerts


def test_every_recorded_series_is_read_later_in_its_own_group() -> None:
    """Prometheus runs a group's rules in order at one evaluation time, but separate groups
    independently (promtool even in a random order): a rule reading a series recorded in another
    group, or later in its own, may see the previous evaluation's value or none."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    for group in groups:
        seen: set[str] = set()
        for rule in group["rules"]:
            for name in recorded:
                if name in rule["expr"]:
                    assert name in seen, (group["name"], rule.get("alert") or rule["record"], name)
            if "record" in rule:
                seen.add(rule["record"])


def _budget_series(tenant: str, spent: float, start: float, end: float) -> list[dict[str, str]]:
    """A calendar day window, as the server publishes one (t2_budget_rolling 0)."""
    labels = f'tenant="{tenant}",window="day",instance="a:8000",job="t2serve"'
    return [
        {"series": f"t2_budget_limit{{{labels}}}", "values": "100+0x30"},
        {"series": f"t2_budget_spent{{{labels}}}", "values": f"{spent:g}+0x30"},
        {
            "series": f"t2_budget_window_start_timestamp_seconds{{{labels}}}",
            "values": f"{start:g}+0x30",
        },
        {
            "series": f"t2_budget_window_end_timestamp_seconds{{{labels}}}",
            "values": f"{end:g}+0x30",
        },
        {"series": f"t2_budget_rolling{{{labels}}}", "values": "0+0x30"},
    ]


def _rolling_series(tenant: str, spent: str, window: str = "hour") -> list[dict[str, str]]:
    """A rolling window as the server publishes one: its bounds are the last window length up
    to the figures' time (here each minute's sample), so its elapsed ratio is always 1; `spent`
    is promtool's series notation (the share over the last length moves as spend slides out)."""
    length = {"minute": 60, "hour": 3600, "day": 86400}[window]
    labels = f'tenant="{tenant}",window="{window}",instance="a:8000",job="t2serve"'
    return [
        {"series": f"t2_budget_limit{{{labels}}}", "values": "100+0x30"},
        {"series": f"t2_budget_spent{{{labels}}}", "values": spent},
        {
            "series": f"t2_budget_window_start_timestamp_seconds{{{labels}}}",
            "values": f"{-length}+60x30",
        },
        {"series": f"t2_budget_window_end_timestamp_seconds{{{labels}}}", "values": "0+60x30"},
        {"series": f"t2_budget_rolling{{{labels}}}", "values": "1+0x30"},
    ]


def _alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    """An expected firing alert; promtool checks labels (annotations only when given)."""
    return {"exp_labels": {"alertname": name, "severity": severity, **labels}}


def _rules_without_annotations(tmp_path: Path) -> Path:
    """A copy of the shipped rules minus annotations: promtool 2.42 compares annotations too,
    and these tests are about when alerts fire (labels), not their prose."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "t2serve_rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _rule_tests(rules: Path) -> dict[str, Any]:
    """Synthetic series at 1m resolution from t=0 (promtool's clock starts at the Unix epoch)."""
    budget = [
        # 85% burned, window just started: warning only.
        *_budget_series("early85", spent=85, start=0, end=86400),
        # 100% burned, window just started: warning and critical.
        *_budget_series("early100", spent=100, start=0, end=86400),
        # 90% burned with 93% of the window gone: on pace, no alert.
        *_budget_series("late", spent=90, start=-80000, end=6400),
        # 50% burned early: fine.
        *_budget_series("calm", spent=50, start=0, end=86400),
    ]
    busy = 'instance="a:8000",job="t2serve"'
    service = [
        {"series": 't2_budget_rejections_total{tenant="early100"}', "values": "0 0 0 1 2 3 3 3"},
        {"series": 't2_budget_rejections_total{tenant="calm"}', "values": "0+0x10"},
        # 2% of requests fail with 5xx: 98 ok + 2 errors per minute.
        {"series": 't2_requests_total{status="200",tenant="a",model="m"}', "values": "0+98x30"},
        {"series": 't2_requests_total{status="500",tenant="a",model="m"}', "values": "0+2x30"},
        # Every request takes between 30 and 60 s: p95 is over the 30 s SLO.
        {"series": 't2_request_duration_seconds_bucket{le="30"}', "values": "0+0x30"},
        {"series": 't2_request_duration_seconds_bucket{le="60"}', "values": "0+10x30"},
        {"series": 't2_request_duration_seconds_bucket{le="+Inf"}', "values": "0+10x30"},
        {"series": f"t2_engine_ready{{{busy}}}", "values": "1 1 0 0 0 0 0 0"},
        {"series": 't2_engine_ready{instance="b:8000",job="t2serve"}', "values": "1+0x10"},
        # a's journal holds 2 settles from 1m to 13m, then drains; b's one settle for 5 minutes
        {"series": f"t2_settles_pending{{{busy}}}", "values": "0 2+0x12 0+0x10"},
        {
            "series": 't2_settles_pending{instance="b:8000",job="t2serve"}',
            "values": "0 1+0x4 0+0x20",
        },
    ]
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": budget,
                "promql_expr_test": [
                    {
                        "expr": 't2:budget_window_elapsed:ratio{tenant="late"}',
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": 't2:budget_window_elapsed:ratio{tenant="late",'
                                'window="day"}',
                                "value": (80000 + 600) / 86400,
                            }
                        ],
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "T2BudgetBurn80Early",
                        "exp_alerts": [
                            _alert("T2BudgetBurn80Early", "warning", tenant=t, window="day")
                            for t in ("early100", "early85")
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "T2BudgetExhaustedEarly",
                        "exp_alerts": [
                            _alert(
                                "T2BudgetExhaustedEarly",
                                "critical",
                                tenant="early100",
                                window="day",
                            )
                        ],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": service,
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "T2BudgetRejections",
                        "exp_alerts": [_alert("T2BudgetRejections", "warning", tenant="early100")],
                    },
                    {"eval_time": "2m", "alertname": "T2BudgetRejections", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "T2HighErrorRate",
                        "exp_alerts": [_alert("T2HighErrorRate", "critical")],
                    },
                    # Pending for its 5m `for:` from the first rate at 1m: not yet firing at 4m.
                    {"eval_time": "4m", "alertname": "T2HighErrorRate", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "T2LatencyP95OverSLO",
                        "exp_alerts": [_alert("T2LatencyP95OverSLO", "warning")],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "T2EngineNotReady",
                        "exp_alerts": [_alert("T2EngineNotReady", "critical", instance="a:8000")],
                    },
                    {"eval_time": "3m", "alertname": "T2EngineNotReady", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "T2SettlesPending",
                        "exp_alerts": [_alert("T2SettlesPending", "warning", instance="a:8000")],
                    },
                    {"eval_time": "10m", "alertname": "T2SettlesPending", "exp_alerts": []},
                    {"eval_time": "15m", "alertname": "T2SettlesPending", "exp_alerts": []},
                ],
            },
        ],
    }


def test_alerts_fire_when_and_only_when_they_should(promtool: Promtool, tmp_path: Path) -> None:
    spec = tmp_path / "t2serve_rules_test.yml"
    rules = _rules_without_annotations(tmp_path)
    spec.write_text(yaml.safe_dump(_rule_tests(rules), sort_keys=False))
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rolling_budget_alerts_fire_on_the_share_spent_over_the_last_window(
    promtool: Promtool, tmp_path: Path
) -> None:
    """A rolling window never starts or resets, so "burned early" cannot apply: its alerts fire
    on the share of its limit spent over the last window length (80%: warning after 1m; 100%:
    critical at once) and stop once the spend slides out. The calendar alerts stay quiet on
    rolling windows and the rolling ones on calendar windows."""
    series = [
        *_rolling_series("hot85", "85+0x30"),  # 85% of the last hour: warning only
        *_rolling_series("full", "100+0x30", window="minute"),  # all of it: both
        *_rolling_series("calm", "50+0x30"),  # half: fine
        # 90% for 5 minutes, then its oldest spend slides out: 40%
        *_rolling_series("cooled", "90+0x5 40+0x25", window="day"),
        # a calendar day window 85% burned early: the calendar alert, not the rolling one
        *_budget_series("early85", spent=85, start=0, end=86400),
    ]

    def fired(eval_time: str, alert: str, severity: str, *tenants: tuple[str, str]) -> Any:
        expected = [_alert(alert, severity, tenant=t, window=w) for t, w in tenants]
        return {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}

    spec = {
        "rule_files": [str(_rules_without_annotations(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    fired("4m", "T2BudgetBurn80Rolling", "warning",
                          ("cooled", "day"), ("full", "minute"), ("hot85", "hour")),
                    fired("4m", "T2BudgetExhaustedRolling", "critical", ("full", "minute")),
                    fired("0m", "T2BudgetExhaustedRolling", "critical", ("full", "minute")),
                    fired("0m", "T2BudgetBurn80Rolling", "warning"),  # pending for its 1m
                    fired("10m", "T2BudgetBurn80Rolling", "warning",
                          ("full", "minute"), ("hot85", "hour")),  # cooled: slid out
                    fired("10m", "T2BudgetBurn80Early", "warning", ("early85", "day")),
                    fired("10m", "T2BudgetExhaustedEarly", "critical"),
                ],
            }
        ],
    }  # fmt: skip
    path = tmp_path / "rolling_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_error_rate_below_one_percent_stays_quiet(promtool: Promtool, tmp_path: Path) -> None:
    spec = {
        "rule_files": [str(_rules_without_annotations(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 't2_requests_total{status="200"}', "values": "0+995x30"},
                    {"series": 't2_requests_total{status="503"}', "values": "0+5x30"},
                    {"series": 't2_requests_total{status="429"}', "values": "0+50x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "T2HighErrorRate", "exp_alerts": []}
                ],
            }
        ],
    }
    path = tmp_path / "quiet_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_evaluate_against_a_live_scrape(
    prometheus: PrometheusFactory, recorder: Callable[..., Recorder]
) -> None:
    """The shipped rules, loaded by a real Prometheus scraping real exposition output, evaluate
    without errors; the recorded 429s fire T2BudgetRejections and nothing else fires (the
    recorded budget is 35% spent; no 5xx; latency well under the SLO; engine ready)."""
    rec = recorder(["alpha", "beta"], 2, serve=True, configured=["alpha", "beta"])
    prom = prometheus(targets=[rec.target], rule_files=[RULES])
    prom.wait_for_scrape(after=time.time())
    rec.record_again()  # increase() needs the counters to move between two scrapes
    prom.wait_for_scrape(after=time.time())
    deadline = time.monotonic() + 30
    while True:
        rules = [rule for group in prom.rule_groups() for rule in group["rules"]]
        evaluated = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
        if (evaluated and firing) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules
    assert firing == {"T2BudgetRejections"}
    burn = prom.values_by("t2:budget_burn:ratio", "tenant")
    assert burn == {"alpha": 0.35, "beta": 0.35}  # spent 35 of 100 (recorder's set_budget)
    elapsed = prom.values_by("t2:budget_window_elapsed:ratio", "tenant")
    assert all(0 <= v <= 1 for v in elapsed.values()) and set(elapsed) == {"alpha", "beta"}


def test_rolling_budget_alerts_stop_while_its_figures_are_unknown(
    promtool: Promtool, tmp_path: Path
) -> None:
    """While the ledger's store is down, a replica marks a rolling window's spend unknown (NaN,
    server.billing.gauges): the burn ratio is NaN and compares false, so an alert firing on
    the last figure read stops, and fires again once a read shows spend again. A replica that
    still reads the ledger is the one `max by` shows: NaN is no maximum."""
    nan = " ".join(["NaN"] * 10)
    labels = 'tenant="split",window="hour",job="t2serve",instance='
    series = [
        *_rolling_series("outage", f"100+0x4 {nan} 100+0x15"),  # the store down from 5m to 15m
        *_rolling_series("split", f"100+0x4 {nan} 100+0x15"),  # replica a:8000 loses it...
        {"series": f't2_budget_spent{{{labels}"b:8000"}}', "values": "90+0x30"},  # ...b reads
    ]

    def fired(eval_time: str, alert: str, *tenants: str) -> Any:
        severity = "critical" if alert == "T2BudgetExhaustedRolling" else "warning"
        expected = [_alert(alert, severity, tenant=t, window="hour") for t in tenants]
        return {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}

    spec = {
        "rule_files": [str(_rules_without_annotations(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    fired("4m", "T2BudgetExhaustedRolling", "outage", "split"),
                    fired("10m", "T2BudgetExhaustedRolling"),  # nobody can vouch for 100%
                    fired("10m", "T2BudgetBurn80Rolling", "split"),  # b's 90%; outage's NaN: none
                    fired("16m", "T2BudgetExhaustedRolling", "outage", "split"),  # read again
                ],
            }
        ],
    }
    path = tmp_path / "unknown_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
