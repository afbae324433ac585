"""A real Prometheus scrapes the real app: `t2serve serve` in a subprocess (real engine on the
shipped model, SQLite ledger, prometheus-client multiprocess mode). Per-tenant spend that
Prometheus reports equals the ledger's, the request counts match, every dashboard query names a
metric the app exposes, and a second worker process writing to the same directory adds up."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.prometheus import (
    PrometheusFactory,
    Recorder,
    exposed_sample_names,
    lint_findings,
    promql_metric_names,
)
from tests.fixtures.replicas import start_t2serve
from tests.support import free_port, need
from tests.test_observability_dashboard import _dashboard, _queries, substitute

pytestmark = [pytest.mark.engine, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny-arith"
MODEL_DIR = ROOT / "models" / MODEL
ADMIN_KEY = "obs-admin-key"
KEYS = {"obs-a": "obs-key-a", "obs-b": "obs-key-b"}
REQUESTS = {"obs-a": 3, "obs-b": 2}
READY_TIMEOUT_S = 300.0


def app_config(ledger_path: Path, port: int) -> dict[str, Any]:
    """Two metered tenants with prices in money and FLOPs and a roomy monthly budget."""
    prices = {
        "currency": "USD",
        "models": {"*": {"prompt_per_1m": 100.0, "completion_per_1m": 300.0, "params": 1.0e6}},
    }
    return {
        "demo": True,
        "server": {"host": "127.0.0.1", "port": port, "drain_timeout_s": 5},
        "models": [{"id": MODEL, "path": str(MODEL_DIR)}],
        # Small KV cache: this engine runs beside the test session's own.
        "engine": {"kv_cache_memory_bytes": 128 * 2**20, "max_num_seqs": 32},
        "ledger": {"backend": "sqlite", "path": str(ledger_path)},
        "defaults": {"policy": "fixed:2", "max_samples": 8, "max_tokens": 12},
        "tenants": [
            {
                "id": tenant,
                "api_keys": [{"plain": key}],
                "models": [MODEL],
                "prices": prices,
                "budgets": {"month": {"limit": 1000.0, "unit": "currency"}},
            }
            for tenant, key in KEYS.items()
        ],
    }


@dataclass
class AppProcess:
    base_url: str
    target: str
    multiproc_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", timeout=30, **kwargs)

    def exposition(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def chat(self, tenant: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEYS[tenant]}"},
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Q: 21+34-8=?"}],
                "max_tokens": 12,
                "t2": {"policy": "fixed:2"},
            },
            timeout=120,
        )

    def ledger(self, tenant: str) -> dict[str, Any]:
        """The ledger's view of a tenant, from the admin API (issue 6)."""
        response = self.get(
            f"/admin/tenants/{tenant}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


def ledger_spend(view: dict[str, Any], unit: str) -> float:
    """Settled spend in `unit` in the month window, from GET /admin/tenants/{id} (issue 6):
    the ledger keeps money and FLOPs for every charge."""
    (month,) = [w for w in view["windows"] if w["window"] == "month"]
    return float(month["spent_money"] if unit == "currency" else month["spent_flops"])


@pytest.fixture(scope="module")
def app_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    need((MODEL_DIR / "config.json").is_file(), "the shipped tiny model (models/tiny-arith)")
    workdir = tmp_path_factory.mktemp("obs-app")
    port = free_port()
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(app_config(workdir / "ledger.sqlite", port)))
    multiproc_dir = workdir / "prometheus-multiproc"
    multiproc_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "T2SERVE_ADMIN_KEY": ADMIN_KEY}
    server = start_t2serve(config_path, port, workdir / "t2serve.log", env)
    app = AppProcess(
        server.base_url, f"127.0.0.1:{port}", multiproc_dir, server.process, server.log_path
    )
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield app
    finally:
        server.stop()


def test_prometheus_spend_matches_the_ledger(
    app_process: AppProcess, prometheus: PrometheusFactory
) -> None:
    prom = prometheus(targets=[app_process.target])
    for tenant, count in REQUESTS.items():
        for _ in range(count):
            response = app_process.chat(tenant)
            assert response.status_code == 200, response.text
    # The admin view reads the ledger and publishes its figures (budget gauges, λ) at once.
    ledger = {tenant: app_process.ledger(tenant) for tenant in REQUESTS}
    prom.wait_for_scrape(after=time.time())

    # The query, as ops would type it: each tenant is billed in its budget's unit.
    spend = prom.values_by("sum by (tenant) (t2_spend_total)", "tenant")
    for tenant, view in ledger.items():
        assert view["unit"] == "currency"
        expected = ledger_spend(view, "currency")
        assert expected > 0
        assert spend[tenant] == pytest.approx(expected, rel=1e-9), tenant
    money = prom.values_by('sum by (tenant) (t2_spend_total{unit="currency"})', "tenant")
    assert money == pytest.approx({t: ledger_spend(v, "currency") for t, v in ledger.items()})
    # Budget gauges (burn-down panel, burn alerts) carry the ledger's month window.
    month = {t: next(w for w in v["windows"] if w["window"] == "month") for t, v in ledger.items()}
    for gauge, field in (
        ("t2_budget_spent", "spent"),
        ("t2_budget_limit", "limit"),
        ("t2_budget_remaining", "remaining"),
    ):
        seen = prom.values_by(f'max by (tenant) ({gauge}{{window="month"}})', "tenant")
        assert seen == pytest.approx({t: float(w[field]) for t, w in month.items()}), gauge
    assert set(prom.values_by("t2_price_of_compute", "tenant")) == set(REQUESTS)
    samples = prom.values_by("sum by (tenant) (t2_samples_per_request_count)", "tenant")
    assert samples == {tenant: float(n) for tenant, n in REQUESTS.items()}
    (total,) = prom.query("sum(t2_samples_per_request_count)")
    assert float(total["value"][1]) == sum(REQUESTS.values())
    ok = prom.values_by('sum by (tenant) (t2_requests_total{status="200"})', "tenant")
    assert ok == {tenant: float(n) for tenant, n in REQUESTS.items()}
    k = prom.values_by("sum by (tenant) (t2_samples_per_request_sum)", "tenant")
    assert k == {tenant: 2.0 * n for tenant, n in REQUESTS.items()}  # fixed:2


def test_every_dashboard_query_names_a_metric_the_app_exposes(
    app_process: AppProcess, prometheus: PrometheusFactory
) -> None:
    assert app_process.chat("obs-a").status_code == 200
    exposed = exposed_sample_names(app_process.exposition())
    prom = prometheus(targets=[app_process.target])
    prom.wait_for_scrape(after=time.time())
    for title, expr in _queries(_dashboard()):
        for name in promql_metric_names(substitute(expr)):
            assert name in exposed, f"{title}: {name} is not on the app's /metrics"
        prom.query(substitute(expr))  # Prometheus's parser accepts it (raises otherwise)


def test_promtool_accepts_the_live_multiprocess_exposition(
    app_process: AppProcess, promtool: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = promtool("check", "metrics", stdin=app_process.exposition())
    assert not lint_findings(result), result.stdout + result.stderr


def test_a_second_worker_process_adds_up(
    app_process: AppProcess, recorder: Callable[..., Recorder]
) -> None:
    """Another process (as a second uvicorn worker would) records into the app's
    PROMETHEUS_MULTIPROC_DIR; the app's /metrics then reports both processes' counts."""
    from tests.test_observability_metrics import total

    # vLLM writes its gauges into the folder once its engine has served: serve one here, so
    # the test does not lean on an earlier test of the module having done it
    assert app_process.chat("obs-a").status_code == 200
    before = app_process.exposition()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(app_process.multiproc_dir)}
    recorder(["obs-a"], 4, serve=False, env=env)
    after = app_process.exposition()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("t2_requests_total", tenant="obs-a", status="200") == 4
    assert delta("t2_samples_per_request_count", tenant="obs-a") == 4
    assert delta("t2_spend_total", tenant="obs-a", unit="currency") == pytest.approx(1.0)
    assert delta("t2_requests_total", tenant="obs-b") == 0
    assert "vllm:num_requests_running" in exposed_sample_names(after)
