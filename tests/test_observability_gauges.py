"""Budget gauges with several workers (README, Observability): one shared ledger, so each
worker's /metrics shows the value written most recently, by whichever worker wrote it.

Workers write different values in turn, so "most recent" differs from the max, the min and
the sum of them: 60 then 20 then 40 must read 40. Each worker is a fresh interpreter with
PROMETHEUS_MULTIPROC_DIR set before prometheus-client is imported, as in production."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from server import metrics

ROOT = Path(__file__).resolve().parent.parent
WORKER = """
import sys
from server import metrics
remaining, lam = float(sys.argv[1]), float(sys.argv[2])
if remaining >= 0:
    metrics.set_budget("alpha", "day", limit=100.0, remaining=remaining, reserved=1.0)
    metrics.set_price_of_compute("alpha", lam)
if "--render" in sys.argv:
    sys.stdout.write(metrics.render_latest()[0].decode())
"""


def worker(multiproc_dir: Path, remaining: float, lam: float, render: bool = False) -> str:
    args = [sys.executable, "-c", WORKER, str(remaining), str(lam)] + (
        ["--render"] if render else []
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def gauge(exposition: str, name: str) -> list[float]:
    return [
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and s.labels.get("tenant") == "alpha"
    ]


def test_budget_gauges_show_the_most_recent_write_of_any_worker(tmp_path: Path) -> None:
    metrics.reset_multiprocess_dir(tmp_path)
    worker(tmp_path, remaining=60.0, lam=0.3)
    worker(tmp_path, remaining=20.0, lam=0.1)
    exposition = worker(tmp_path, remaining=40.0, lam=0.2, render=True)
    assert gauge(exposition, "t2_budget_remaining") == [40.0]  # not max 60, min 20, sum 120
    assert gauge(exposition, "t2_budget_spent") == [59.0]  # 100 − 40 − 1, from the same write
    assert gauge(exposition, "t2_price_of_compute") == [0.2]
    # a worker that wrote nothing itself reads the same figures
    reader = worker(tmp_path, remaining=-1.0, lam=0.0, render=True)
    assert gauge(reader, "t2_budget_remaining") == [40.0]
    assert gauge(reader, "t2_price_of_compute") == [0.2]
