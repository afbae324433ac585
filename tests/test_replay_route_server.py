"""The same route in the replay and in the server's routed loop: for the same recorded samples
(a scripted engine per model replays them in the replay's draw order), the same λ and prices
(a call's prompt, a repeat call's prefix-cache hit, each sample's completion, each model's
cap), `Sampler.run` draws exactly the waves `run_one` decides, and answers the same."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from controller.pacing import ComputePrice
from controller.policy import make_policy
from controller.replay.route import GOLD, Draws, Prices, calibrate_route, folds, run_one
from controller.replay.routing_set import load_routing_set
from controller.routing import N_MAX, POOL, SHRINK, route_price
from server.engine.service import EngineService
from server.sampling import PolicyBook, Sampler
from server.sampling.job import RoutedJob
from tests.fakes import Script, ScriptedEngine
from tests.test_replay_route import write_set
from tests.test_sampling_loop import RecordingBilling, job

MODELS = ("weak", "strong")
PROMPT = "Q: what is three plus four?  A: "
"""32 tokens (one per character) against max_tokens 16: a call costs two samples."""


def recorded_set(root: Path, n: int = 30) -> Path:
    """16 samples per model and question (so no model's recording runs out before N_MAX):
    weak is unanimous on a third of the questions, split on the rest; strong mostly right."""
    rng = np.random.default_rng(7)
    weak: list[list[str | None]] = []
    strong: list[list[str | None]] = []
    for i in range(n):
        p_weak = 0.95 if i % 3 == 0 else 0.4
        weak.append(["7" if rng.random() < p_weak else str(rng.integers(1, 4)) for _ in range(16)])
        strong.append(["7" if rng.random() < 0.9 else "5" for _ in range(16)])
    weak[1][0] = None  # an abstention, replayed as a text with no number
    return write_set(root, weak, strong)


def replaying(texts: list[str]) -> Script:
    return lambda j: texts[j]


@dataclass
class PricedBilling(RecordingBilling):
    """Quotes the strong model at ten times the weak one's price per token."""

    def quote(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        per = 10.0 if model == "strong" else 1.0
        return per * (prompt_tokens + completion_tokens)


@pytest.mark.parametrize("lam_per_strong", [0.02, 0.1, 0.3])
@pytest.mark.parametrize("cheapest_first", [False, True])
async def test_the_server_draws_the_waves_the_replay_decides(
    tmp_path: Path, cheapest_first: bool, lam_per_strong: float
) -> None:
    rs = load_routing_set(recorded_set(tmp_path / "s", n=80))
    rows = folds(rs.questions, 2, seed=0)
    route = calibrate_route(rs, rows[1], MODELS, 0, SHRINK, pool=POOL)  # the server's
    draws = Draws.make(rs, perms=1, seed=3)
    services = {m: EngineService(m, {}, ScriptedEngine()) for m in MODELS}
    prompt = services["weak"].tokenize(PROMPT)
    jobs = {m: job(services[m], "t2", model=m, prompt=prompt, max_samples=2 * N_MAX)
            for m in MODELS}  # fmt: skip
    quote = PricedBilling(unit="currency").quote
    # priced as the ledger bills a wave: the call's prompt once (a repeat call's prompt is a
    # prefix-cache hit: free), each sample's completion; each model draws at most N_MAX
    prices = Prices(
        sample={m: quote(0, jobs[m].max_tokens, m) for m in MODELS},
        call={m: quote(jobs[m].prompt_tokens, 0, m) for m in MODELS},
        caps={m: N_MAX for m in MODELS},
        recall={m: 0.0 for m in MODELS},
    )
    assert all(prices.call[m] == 2 * prices.sample[m] > 0 for m in MODELS)
    alone = {m: prices.call[m] + prices.sample[m] for m in MODELS}  # one sample, its call's too
    # a spend target sets the route's λ: one strong sample is worth `lam_per_strong` accuracy
    price = ComputePrice(lam_per_strong / alone["strong"], "currency", "spend")
    lam = route_price(make_policy("t2").own_sample_price, price, alone["weak"], "currency")
    shapes: set[tuple[tuple[str, int], ...]] = set()
    for i in rows[0]:
        codes = {m: [int(c) for c in draws.codes(rs, m)[0, i]] for m in MODELS}
        drawn = {m: [None if c < 0 else str(c) for c in codes[m]] for m in MODELS}
        zero = {m: np.zeros(16) for m in MODELS}
        replayed = run_one(route, prices, lam, cheapest_first, True, drawn, zero,
                           {m: 0.0 for m in MODELS})  # fmt: skip

        engines = {}
        for m in MODELS:  # each engine replays its model's recording in the same order
            texts = [f"A: {c}" if c >= 0 else "no answer" for c in codes[m]]
            engines[m] = EngineService(m, {}, ScriptedEngine(replaying(texts)))
        sampler = Sampler(engines, PolicyBook())
        routed = RoutedJob("r", jobs, cheapest_first)
        out = await sampler.run(routed, PricedBilling(unit="currency", price=price), route=route)

        assert out.route is not None
        assert out.route.waves == replayed.waves, f"question {rs.ids[i]}"
        assert (out.answer == GOLD) == replayed.right
        shapes.add(tuple(out.route.waves))
    assert len(shapes) > 1  # the recordings, not one fixed plan, decide the waves
