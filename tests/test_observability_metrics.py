"""server/metrics.py: names and labels follow Prometheus conventions, label values stay bounded,
promtool accepts the exposition, and several worker processes add up (multiprocess mode).

Recording happens in fresh subprocesses (tests.fixtures.prometheus.run_recorder), so known
figures never mix with the test session's own registry, and so PROMETHEUS_MULTIPROC_DIR is set
before prometheus-client is imported, as it must be."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server import metrics
from tests.fixtures.prometheus import DEMO_REQUEST, Recorder

Promtool = Callable[..., subprocess.CompletedProcess[str]]
RecorderFactory = Callable[..., Recorder]

ISSUE_METRICS = {
    # name in the exposition: label names the issue asks for
    "t2_requests_total": {"tenant", "model", "status"},
    "t2_samples_per_request_bucket": {"tenant", "model", "policy", "le"},
    "t2_waves_per_request_bucket": {"le"},
    "t2_stop_reason_total": {"reason"},
    "t2_tokens_total": {"tenant", "model", "kind"},
    "t2_spend_total": {"tenant", "unit"},
    "t2_budget_limit": {"tenant", "window"},
    "t2_budget_remaining": {"tenant", "window"},
    "t2_budget_reserved": {"tenant", "window"},
    "t2_price_of_compute": {"tenant"},
    "t2_budget_rejections_total": {"tenant"},
    "t2_vote_agreement_bucket": {"le"},
    "t2_predicted_accuracy_bucket": {"le"},
    "t2_request_duration_seconds_bucket": {"le"},
    "t2_time_to_first_token_seconds_bucket": {"le"},
    "t2_engine_queue_depth": set(),
}


def samples(exposition: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """{label set: value} of every sample called `name`, minus multiprocess `pid` labels."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                key = frozenset((k, v) for k, v in sample.labels.items() if k != "pid")
                found[key] = found.get(key, 0.0) + sample.value
    return found


def total(exposition: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for key, v in samples(exposition, name).items() if wanted <= key)


def test_every_issue_metric_is_defined_with_its_labels(recorder: RecorderFactory) -> None:
    exposition = recorder(["alpha"], 2, serve=True).exposition()
    for name, labels in ISSUE_METRICS.items():
        found = samples(exposition, name)
        assert found, f"{name} missing"
        for key in found:
            assert {k for k, _ in key} == labels, f"{name} has labels {key}"
    assert ISSUE_METRICS.keys() <= metrics.metric_names()


def test_recorded_figures_come_out_exactly(recorder: RecorderFactory) -> None:
    exposition = recorder(["alpha", "beta"], 3, serve=True).exposition()
    for tenant in ("alpha", "beta"):
        assert total(exposition, "t2_requests_total", tenant=tenant, status="200") == 3
        assert total(exposition, "t2_requests_total", tenant=tenant, status="429") == 1
        assert total(exposition, "t2_spend_total", tenant=tenant, unit="currency") == 0.75
        assert total(exposition, "t2_spend_total", tenant=tenant, unit="flops") == 3e9
        assert total(exposition, "t2_tokens_total", tenant=tenant, kind="completion") == 120
        assert total(exposition, "t2_budget_rejections_total", tenant=tenant) == 1
        assert total(exposition, "t2_samples_per_request_count", tenant=tenant) == 3
        assert total(exposition, "t2_samples_per_request_sum", tenant=tenant) == 12
        assert total(exposition, "t2_budget_remaining", tenant=tenant, window="day") == 60
        assert total(exposition, "t2_budget_spent", tenant=tenant, window="day") == 35
        assert total(exposition, "t2_price_of_compute", tenant=tenant) == 0.5
    # `fixed:4` and `t2` are two policy kinds, whatever k a fixed policy uses.
    policies = {dict(k)["policy"] for k in samples(exposition, "t2_samples_per_request_count")}
    assert policies == {"fixed", "t2"}
    assert total(exposition, "t2_waves_per_request_sum") == 6 * DEMO_REQUEST["waves"]
    assert total(exposition, "t2_request_duration_seconds_count") == 8  # the 429s too
    assert total(exposition, "t2_time_to_first_token_seconds_count") == 6
    assert total(exposition, "t2_engine_queue_depth") == 2
    # Calendar day window bounds are published for the burn-down ideal line.
    start = total(exposition, "t2_budget_window_start_timestamp_seconds", tenant="alpha")
    end = total(exposition, "t2_budget_window_end_timestamp_seconds", tenant="alpha")
    assert end - start == 86400 and start % 86400 == 0


def test_labels_outside_the_configured_sets_collapse(recorder: RecorderFactory) -> None:
    """Raw keys or user ids passed as a tenant never make new series."""
    rec = recorder(["alpha", "sk-raw-key-123", "user-42"], 1, serve=True, configured=["alpha"])
    tenants = {dict(k)["tenant"] for k in samples(rec.exposition(), "t2_requests_total")}
    assert tenants == {"alpha", metrics.OTHER}


@pytest.mark.prometheus
def test_promtool_accepts_the_exposition(recorder: RecorderFactory, promtool: Promtool) -> None:
    result = promtool("check", "metrics", stdin=recorder(["alpha"], 2, serve=True).exposition())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", "lint warnings"


def test_bounded_label_caps_free_form_values() -> None:
    label = metrics._BoundedLabel(cap=2)
    assert [label(v) for v in ("a", "b", "c", "a", None, "")] == [
        "a",
        "b",
        metrics.OTHER,
        "a",
        metrics.UNKNOWN,
        metrics.UNKNOWN,
    ]
    label.configure(["x"])
    assert (label("x"), label("a")) == ("x", metrics.OTHER)
    assert label("bad label{}\n") == metrics.OTHER


def test_status_label_is_an_http_code_or_other() -> None:
    assert [metrics._status(s) for s in (200, "429", 999, "teapot", None)] == [
        "200",
        "429",
        metrics.OTHER,
        metrics.OTHER,
        metrics.UNKNOWN,
    ]


def test_window_bounds_are_calendar_aligned_in_utc() -> None:
    now = 1_771_000_123.0  # 2026-02-13 16:28:43 UTC
    assert metrics.window_bounds("minute", now) == (1_771_000_080.0, 1_771_000_140.0)
    assert metrics.window_bounds("hour", now) == (1_770_998_400.0, 1_771_002_000.0)
    assert metrics.window_bounds("day", now) == (1_770_940_800.0, 1_771_027_200.0)
    month = metrics.window_bounds("month", now)
    assert month is not None and month[1] - month[0] == 28 * 86400  # February 2026
    assert metrics.window_bounds("request", now) is None


# --- multiprocess mode -------------------------------------------------------------------------


def test_two_worker_processes_add_up(recorder: RecorderFactory, tmp_path: Path) -> None:
    """Two processes recording into one PROMETHEUS_MULTIPROC_DIR, as two uvicorn workers do:
    either one's /metrics shows the sum of both, and live gauges follow live processes."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    metrics.reset_multiprocess_dir(tmp_path)
    first = recorder(["alpha", "beta"], 3, serve=True, env=env)
    second = recorder(["alpha"], 5, serve=True, env=env)
    for worker in (first, second):
        exposition = worker.exposition()
        assert total(exposition, "t2_requests_total", tenant="alpha", status="200") == 8
        assert total(exposition, "t2_requests_total", tenant="beta", status="200") == 3
        assert total(exposition, "t2_spend_total", tenant="alpha", unit="currency") == 2.0
        assert total(exposition, "t2_samples_per_request_count", tenant="alpha") == 8
        assert total(exposition, "t2_budget_rejections_total", tenant="alpha") == 2
        assert total(exposition, "t2_engine_queue_depth") == 4  # livesum: 2 per worker
        # The shared ledger's gauges are one figure, not one per worker.
        assert (
            samples(exposition, "t2_budget_remaining")[
                frozenset({("tenant", "alpha"), ("window", "day")})
            ]
            == 60
        )

    # A worker exits: its counters stay, its live gauges go once it is marked dead.
    pid = second.process.pid
    second.process.terminate()
    second.process.wait(timeout=10)
    subprocess.run(
        [sys.executable, "-c", f"from server import metrics; metrics.mark_process_dead({pid})"],
        env={**os.environ, **env},
        check=True,
        timeout=60,
    )
    exposition = first.exposition()
    assert total(exposition, "t2_requests_total", tenant="alpha", status="200") == 8
    assert total(exposition, "t2_engine_queue_depth") == 2


@pytest.mark.prometheus
def test_promtool_accepts_the_multiprocess_exposition(
    recorder: RecorderFactory, promtool: Promtool, tmp_path: Path
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    recorder(["alpha"], 2, serve=False, env=env)
    exposition = recorder(["beta"], 2, serve=True, env=env).exposition()
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert total(exposition, "t2_requests_total", status="200") == 4


def test_a_worker_that_exits_drops_its_live_gauges(
    recorder: RecorderFactory, tmp_path: Path
) -> None:
    """A worker exiting normally marks itself dead (atexit): its queue depth leaves the livesum,
    its counters stay."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    recorder(["alpha"], 3, serve=False, env=env)  # records queue depth 2, then exits
    exposition = recorder(["beta"], 1, serve=True, env=env).exposition()
    assert total(exposition, "t2_engine_queue_depth") == 2  # the live worker's only
    assert total(exposition, "t2_requests_total", tenant="alpha", status="200") == 3


def test_reset_multiprocess_dir_forgets_old_runs(recorder: RecorderFactory, tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    recorder(["alpha"], 4, serve=False, env=env)
    assert list(tmp_path.glob("*.db"))
    metrics.reset_multiprocess_dir(tmp_path)
    exposition = recorder(["alpha"], 1, serve=True, env=env).exposition()
    assert total(exposition, "t2_requests_total", tenant="alpha", status="200") == 1
