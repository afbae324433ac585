"""The live app's GET /metrics (real engine, shipped model): promtool accepts it, the engine's
vllm:* metrics are on the same endpoint, and every dashboard query names a metric it exposes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fixtures.prometheus import exposed_sample_names, lint_findings, promql_metric_names
from tests.fixtures.server import DEMO_KEY, MODEL, LiveServer
from tests.test_observability_dashboard import _dashboard, _queries, substitute

pytestmark = [pytest.mark.engine, pytest.mark.prometheus]

Promtool = Callable[..., subprocess.CompletedProcess[str]]


async def _traffic_and_exposition(live: LiveServer) -> str:
    """One answered request (every per-request family gets samples), then GET /metrics."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Q: 12+30-5=?"}],
        "max_tokens": 12,
        "t2": {"policy": "fixed:2"},
    }
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            f"{live.v1}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
        )
        assert response.status_code == 200, response.text
        metrics = await client.get(f"{live.base_url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    return metrics.text


async def test_live_metrics_pass_promtool(live_server: LiveServer, promtool: Promtool) -> None:
    """promtool lints the live exposition clean, apart from vLLM's own naming (see
    tests.fixtures.prometheus.VLLM_LINT_ACCEPTED), which we must not rename."""
    exposition = await _traffic_and_exposition(live_server)
    result = promtool("check", "metrics", stdin=exposition)
    assert not lint_findings(result), result.stdout + result.stderr
    assert "vllm:num_requests_running" in exposition


async def test_engine_metrics_share_the_endpoint(live_server: LiveServer) -> None:
    exposed = exposed_sample_names(await _traffic_and_exposition(live_server))
    assert {"vllm:num_requests_running", "vllm:generation_tokens_total"} <= exposed
    assert {"t2_samples_per_request_count", "t2_requests_total", "t2_engine_ready"} <= exposed
    # Every engine metric the dashboard reads is really there (t2_budget_* need a budgeted
    # tenant: tests/test_observability_scrape.py checks the whole dashboard against its app).
    for title, expr in _queries(_dashboard()):
        for name in promql_metric_names(substitute(expr)):
            if name.startswith("vllm:"):
                assert name in exposed, f"{title}: {name} is not on the live /metrics"
