"""The `T2ServerDown` alert (README, Observability: `/metrics` unreachable): promtool's rule
unit test says when it fires, and a real Prometheus scraping a real exposition that then dies
sees the target down and the alert become pending."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.prometheus import PrometheusFactory, PrometheusServer, Recorder
from tests.test_observability_rules import RULES, _alert, _rules_without_annotations

Promtool = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.prometheus


def test_server_down_fires_after_two_minutes_unreachable(
    promtool: Promtool, tmp_path: Path
) -> None:
    down = 'up{job="t2serve",instance="a:8000"}'
    spec: dict[str, Any] = {
        "rule_files": [str(_rules_without_annotations(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": down, "values": "1 1 0 0 0 0 0 1 1 1"},  # down from 2m to 6m
                    {"series": 'up{job="t2serve",instance="b:8000"}', "values": "1+0x10"},
                    {"series": 'up{job="redis",instance="r:6379"}', "values": "0+0x10"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "T2ServerDown", "exp_alerts": []},
                    # down since 2m: pending for its `for: 2m`, firing from 4m
                    {"eval_time": "3m", "alertname": "T2ServerDown", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "T2ServerDown",
                        "exp_alerts": [
                            _alert("T2ServerDown", "critical", instance="a:8000", job="t2serve")
                        ],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "T2ServerDown",
                        "exp_alerts": [
                            _alert("T2ServerDown", "critical", instance="a:8000", job="t2serve")
                        ],
                    },
                    {"eval_time": "8m", "alertname": "T2ServerDown", "exp_alerts": []},  # back
                ],
            }
        ],
    }
    path = tmp_path / "server_down_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dead_target_makes_server_down_pending_in_a_live_prometheus(
    prometheus: PrometheusFactory, recorder: Callable[..., Recorder]
) -> None:
    rec = recorder(["alpha"], 1, serve=True, configured=["alpha"])
    prom = prometheus(targets=[rec.target], rule_files=[RULES])
    prom.wait_for_scrape(after=time.time())
    assert _server_down_states(prom) == set()  # up: nothing pending
    rec.process.terminate()  # the server is gone: /metrics unreachable
    rec.process.wait(timeout=10)
    deadline = time.monotonic() + 60
    while True:
        up = prom.values_by('up{job="t2serve"}', "instance")
        states = _server_down_states(prom)
        if (up == {rec.target: 0.0} and states) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert up == {rec.target: 0.0}
    assert states == {"pending"}  # `for: 2m` before it fires; the rule matched the dead target


def _server_down_states(prom: PrometheusServer) -> set[str]:
    alerts = prom.api("alerts")["alerts"]
    return {a["state"] for a in alerts if a["labels"]["alertname"] == "T2ServerDown"}
