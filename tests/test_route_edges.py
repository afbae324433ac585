"""Routes and verifiers at their edges (found by an audit of routed requests): a route answers
on a member the request can afford rather than be refused or overspend on one it cannot; its
tie-break returns the best-scored text; a named verifier works under every aggregator; a judge
cut off by its timeout bills what it generated; usage counts the prompt of the model that
read it.

Scripted engines (one character = one token), the shipped pair's real route curves, a metered
SQLite ledger priced so that one small-model sample costs about 43 and a large one about 430.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.app import create_app, serve_in_loop
from server.config import AppConfig, parse_config
from server.engine.base import Prompt, Sample, SamplingParams
from server.errors import EngineDead
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, server_config_dict

SMALL, LARGE = "tiny-chain-31k", "tiny-chain-252k"
STEPS = {"kind": "checker", "checker": "chain_steps", "name": "steps"}
BAD6, GOOD6, SEVEN = "7+8=16;16-9=6;A: 6", "7+8=15;15-9=6;A: 6", "7+8=15;15-9=7;A: 7"
"""Two chains that answer 6 (the first with a wrong step) and one that answers 7."""
LOW_LAM = "t2:lam=0.0000001"
"""A price of compute so low that `auto` starts on the large model."""


def _usd(per_token: float) -> dict[str, float]:
    return {"prompt_per_1m": per_token * 1e6, "completion_per_1m": per_token * 1e6}


def routed_config(tmp: Path, judge: bool = False, **tenant: Any) -> AppConfig:
    """The shipped pair, its `auto` and `cascade` routes, priced 1 and 10 per token."""
    c = server_config_dict()
    c["models"] = [{"id": SMALL, "path": f"models/{SMALL}"},
                   {"id": LARGE, "path": f"models/{LARGE}"},
                   *([{"id": "judge", "path": f"models/{SMALL}"}] if judge else []),
                   {"id": "auto", "route": [SMALL, LARGE]},
                   {"id": "cascade", "route": [SMALL, LARGE], "start": "cheapest"}]  # fmt: skip
    c["ledger"] = {"backend": "sqlite", "path": str(tmp / "ledger.sqlite")}
    prices = {SMALL: _usd(1), LARGE: _usd(10), **({"judge": _usd(1)} if judge else {})}
    c["tenants"][0].update(models=["*"], prices={"currency": "USD", "models": prices}, **tenant)
    return parse_config(c)


@contextlib.asynccontextmanager
async def served(
    engines: dict[str, ScriptedEngine], cfg: AppConfig
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(cfg, engine=engines)
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(
            base_url=live.base_url, headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=60
        ) as http,
    ):
        yield http


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
            "max_tokens": 16, **extra}  # fmt: skip


async def test_auto_answers_on_the_member_a_hard_budget_still_fits(tmp_path: Path) -> None:
    """It was a 429 until the day reset: the route started on the large model, whose one
    sample does not fit, while one small sample does (as `cascade` showed)."""
    cfg = routed_config(tmp_path, budgets={"day": {"limit": 200.0, "hard": True}})
    engines = {SMALL: ScriptedEngine(cycle("A: 7")), LARGE: ScriptedEngine(cycle("A: 7"))}
    async with served(engines, cfg) as http:
        body = chat("auto", t2={"policy": LOW_LAM})
        warm = await http.post("/v1/chat/completions", json={**body, "model": "cascade"})
        assert warm.status_code == 200  # the budget's figures are known from here on
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert {w["model"] for w in r.json()["t2"]["route"]["waves"]} == {SMALL}
        assert not engines[LARGE].calls


async def test_auto_keeps_within_max_cost_when_a_member_fits_it(tmp_path: Path) -> None:
    """One large sample costs about 310 here; `max_cost: 100` drew it anyway (the first
    sample is always tried), where a small one (about 31) fits."""
    engines = {SMALL: ScriptedEngine(cycle("A: 7")), LARGE: ScriptedEngine(cycle("A: 7"))}
    async with served(engines, routed_config(tmp_path)) as http:
        r = await http.post(
            "/v1/chat/completions", json=chat("auto", t2={"policy": LOW_LAM, "max_cost": 100})
        )
        t2 = r.json()["t2"]
        assert 0 < t2["cost"] <= 100, t2
        assert {w["model"] for w in t2["route"]["waves"]} == {SMALL}


async def test_a_routes_tie_break_returns_the_best_scored_text(tmp_path: Path) -> None:
    """The large model's votes tie 4–4 between 7 and 6 and the small model's break it to 6;
    the text returned was the first 6 (a broken chain), not the one the checker scores 1."""
    cfg = routed_config(tmp_path, verifiers=[STEPS])
    engines = {SMALL: ScriptedEngine(cycle("A: 6", "A: 1", "A: 2", "A: 3", "A: 4")),
               LARGE: ScriptedEngine(cycle(SEVEN, BAD6, SEVEN, GOOD6))}  # fmt: skip
    async with served(engines, cfg) as http:
        r = await http.post(
            "/v1/chat/completions",
            json=chat(
                "cascade",
                max_tokens=24,
                t2={"policy": "t2:lam=0.0001", "max_samples": 9, "verifier": "steps"},
            ),
        )
        body = r.json()
        assert body["t2"]["votes"] == {"7": 4, "6": 4} and body["t2"]["answer"] == "6"
        assert body["choices"][0]["message"]["content"] == GOOD6


async def test_a_named_verifier_works_under_logprob_votes(tmp_path: Path) -> None:
    """`aggregator: logprob` dropped the named verifier without a word (t2.verifier null) and
    returned the broken chain; its scores now pick the text, as under every method."""
    cfg = routed_config(tmp_path, verifiers=[STEPS])
    for model, policy in ((SMALL, "fixed:2"), ("cascade", "t2:lam=0.01")):
        engines = {m: ScriptedEngine(cycle(BAD6, GOOD6)) for m in (SMALL, LARGE)}
        async with served(engines, cfg) as http:
            r = await http.post(
                "/v1/chat/completions",
                json=chat(
                    model,
                    max_tokens=24,
                    t2={"policy": policy, "aggregator": "logprob", "verifier": "steps"},
                ),
            )
            body = r.json()
            assert body["t2"]["verifier"] == "steps", body["t2"]
            if model == SMALL:  # both of its samples answer 6: the scored-1 text is returned
                assert body["choices"][0]["message"]["content"] == GOOD6


async def test_a_judge_cut_by_its_timeout_bills_the_tokens_it_generated(tmp_path: Path) -> None:
    """The judge's reply tokens generated before its `timeout_s` were never billed (only its
    prompt was): the call is now aborted and its engine's own figures added."""
    judge_cfg = {"kind": "judge", "model": "judge", "name": "judge", "read": "yes_no",
                 "pattern": "yes", "timeout_s": 0.3}  # fmt: skip
    cfg = routed_config(tmp_path, judge=True, verifiers=[judge_cfg])
    judge = ScriptedEngine(cycle("yes, it is right"), token_s=0.05)  # 16 tokens in 0.8 s
    engines = {SMALL: ScriptedEngine(cycle("A: 6")), LARGE: ScriptedEngine(cycle("A: 6")),
               "judge": judge}  # fmt: skip
    async with served(engines, cfg) as http:
        r = await http.post(
            "/v1/chat/completions",
            json=chat(
                SMALL, t2={"policy": "fixed:2", "aggregator": "best_of_n", "verifier": "judge"}
            ),
        )
        t2 = r.json()["t2"]
        assert "timed out" in (t2["note"] or "")
        usage = list(judge._usage.values())
        assert sum(u.completion_tokens for u in usage) > 0  # it had begun its reply
        assert t2["verifier_tokens"] == sum(u.prompt_tokens + u.completion_tokens for u in usage)


@dataclass
class TwoCharTokens(ScriptedEngine):
    """A member with a tokenizer of its own: two characters per token."""

    def tokenize(self, prompt: str, *, chat: bool = False) -> Prompt:
        return Prompt(prompt, tuple(range((len(prompt) + 1) // 2)), chat)


async def test_usage_counts_the_prompt_as_the_model_that_read_it(tmp_path: Path) -> None:
    """`usage.prompt_tokens` was the route's first member's count although only the other,
    tokenizing apart, read (and billed) the prompt."""
    engines = {SMALL: ScriptedEngine(cycle("A: 7")), LARGE: TwoCharTokens(cycle("A: 7"))}
    async with served(engines, routed_config(tmp_path)) as http:
        r = await http.post("/v1/chat/completions", json=chat("auto", t2={"policy": LOW_LAM}))
        body = r.json()
        assert {w["model"] for w in body["t2"]["route"]["waves"]} == {LARGE}
        assert body["usage"]["prompt_tokens"] == engines[LARGE].calls[0].prompt.tokens


async def test_a_members_context_error_names_the_member(tmp_path: Path) -> None:
    """ "This model's maximum context length is 64" on a route left the client to guess which
    of its models is that short."""
    engines = {SMALL: ScriptedEngine(cycle("A: 7")),
               LARGE: ScriptedEngine(cycle("A: 7"), context=64)}  # fmt: skip
    async with served(engines, routed_config(tmp_path)) as http:
        r = await http.post("/v1/chat/completions", json=chat("auto", max_tokens=60))
        error = r.json()["error"]
        assert r.status_code == 400 and error["code"] == "context_length_exceeded"
        assert error["message"].startswith("This model's maximum context length is 64")
        assert error["message"].endswith(f"(route 'auto', its member '{LARGE}')")
        assert error["param"] == "max_tokens"


class DiesWhenAsked(ScriptedEngine):
    """Ready when the request is admitted, dead by the time a wave reaches it."""

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        raise EngineDead("the engine core died")
        yield  # an async generator, as the engines are


async def test_a_member_failing_mid_route_answers_with_the_waves_drawn_before(
    tmp_path: Path,
) -> None:
    """The small model's split vote moves the question to the large one, whose engine is down:
    that was a 503 although the small model's samples were drawn and billed. Now the answer is
    theirs, and says why it stopped; with nothing drawn yet it stays a 503."""
    engines = {SMALL: ScriptedEngine(cycle("A: 1", "A: 2", "A: 3", "A: 1")),
               LARGE: DiesWhenAsked(cycle("A: 7"))}  # fmt: skip
    async with served(engines, routed_config(tmp_path)) as http:
        r = await http.post("/v1/chat/completions", json=chat("cascade", t2={"policy": LOW_LAM}))
        assert r.status_code == 200, r.text
        body = r.json()
        t2 = body["t2"]
        assert t2["stop_reason"] == "engine_unavailable"
        assert f"{LARGE} failed (engine_" in t2["note"]
        assert body["model"] == SMALL and body["choices"][0]["message"]["content"] == "A: 1"
        assert t2["cost"] > 0 and {w["model"] for w in t2["route"]["waves"]} == {SMALL}
        r = await http.post("/v1/chat/completions", json=chat("auto", t2={"policy": LOW_LAM}))
        assert r.status_code == 503, r.text  # it started on the large model: nothing to give
