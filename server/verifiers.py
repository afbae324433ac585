"""Verifiers by kind, as a tenant configures them (server.config.VerifierConfig).

- `http`: an external scoring service (`HttpVerifier`); not billed (it is the tenant's own).
- `reward_model`: a sequence-classification model on vLLM's pooling runner
  (server/engine/pooling.py); billed per scored token like generation.
- `judge`: a served model grading each candidate at temperature 0; billed like generation.
- `checker`: a programmatic checker (controller.aggregate.checkers); free.

Each implements `controller.aggregate.Verifier` (`name`, `async score(question, candidates)`)
and records what it spent in a `VerifierSpend` as it goes, so a failure part-way still bills the
tokens already read. `ServedVerifier` adds the config's score map (score → P(correct)) and
stopping threshold. The request loop (server/sampling/loop.py) scores each wave, bills the
spend, and degrades to a plain vote when a verifier fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from controller.aggregate import ProgrammaticVerifier, Verifier, get_extractor
from controller.aggregate.checkers import get_checker
from controller.aggregate.score_map import IsotonicScoreMap, TrafficScoreMap
from controller.shield import uncancellable
from server.config import TenantConfig, VerifierConfig
from server.engine.base import GenerationOptions
from server.errors import VerifierError

if TYPE_CHECKING:
    from server.engine.pooling import PoolingService
    from server.engine.service import EngineService

log = logging.getLogger("t2serve.verifiers")
DEFAULT_TEMPLATE = "{question}{candidate}"
SPECIAL_TOKENS_BOUND = 16  # BOS/EOS/CLS/SEP and the like a tokenizer adds per text


class HttpVerifier:
    """POST {"question", "candidate"} per candidate to `url`; expects {"score": <number>}.

    Candidates are scored concurrently (at most `concurrency` in flight) over one pooled
    client, all within `timeout_s`. Non-2xx replies, bad JSON, a missing/non-numeric score or
    the time running out raise VerifierError.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
        concurrency: int = 8,
        name: str = "http",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.timeout_s = timeout_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self._owns_client = client is None
        self._limit = asyncio.Semaphore(max(1, concurrency))

    async def _one(self, question: str, candidate: str) -> float:
        async with self._limit:
            reply = await self._client.post(
                self.url, json={"question": question, "candidate": candidate}
            )
        if reply.status_code // 100 != 2:
            raise VerifierError(f"HTTP {reply.status_code} from {self.url}")
        try:
            body = reply.json()
        except ValueError:
            raise VerifierError(f"non-JSON reply from {self.url}") from None
        score = body.get("score") if isinstance(body, dict) else None
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise VerifierError(f"reply from {self.url} has no numeric `score`")
        return float(score)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return list(await asyncio.gather(*(self._one(question, c) for c in candidates)))
        except TimeoutError:
            raise VerifierError(f"no scores within {self.timeout_s:g} s") from None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


@dataclass
class VerifierSpend:
    """Tokens a verifier's model read and wrote for one request (billed to `model`)."""

    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RewardModelVerifier:
    """Score candidates with a reward model on vLLM's pooling runner (in-process or remote)."""

    def __init__(self, pooling: PoolingService, template: str, name: str) -> None:
        self.pooling = pooling
        self.template = template
        self.name = name
        self.spend = VerifierSpend(pooling.model_id)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        texts = [self.template.format(question=question, candidate=c) for c in candidates]
        scored = await self.pooling.classify(texts)
        self.spend.prompt_tokens += scored.tokens
        return scored.scores

    def worst_case(self, question: str, candidates: Sequence[str]) -> VerifierSpend:
        """At most what scoring these reads: a byte-level tokenizer makes at most one token per
        UTF-8 byte, plus the few special tokens the model adds (SPECIAL_TOKENS_BOUND)."""
        texts = [self.template.format(question=question, candidate=c) for c in candidates]
        tokens = sum(len(t.encode()) + SPECIAL_TOKENS_BOUND for t in texts)
        return VerifierSpend(self.spend.model, tokens, 0)


class JudgeVerifier:
    """Ask a served model to grade each candidate at temperature 0 (see VerifierConfig.read).

    Renders `template` with {question} and {candidate}; identical prompts (a template without
    {candidate}, as `read: answer` uses) are asked once per call.
    """

    def __init__(
        self, engine: EngineService, cfg: VerifierConfig, extractor: str, name: str
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.template = cfg.template or "{question}{candidate}"
        self.pattern = re.compile(cfg.pattern)
        self.extract = get_extractor(extractor)
        self.name = name
        self.spend = VerifierSpend(engine.model_id)
        self._calls = 0

    async def _ask(self, prompt_text: str) -> tuple[str, float]:
        prompt = self.engine.tokenize(prompt_text)
        params = self.engine.params(
            max_tokens=self.cfg.max_tokens,
            temperature=0.0,
            top_p=None,
            stop=[],
            seed=None,
            wave=0,
            options=GenerationOptions(sample_logprob=self.cfg.read == "yes_no"),  # its confidence
        )
        self._calls += 1
        rid = f"judge-{id(self)}-{self._calls}"
        text, logprob = "", 0.0
        self.spend.prompt_tokens += prompt.tokens
        replied = False
        try:
            async with contextlib.aclosing(self.engine.sample(prompt, 1, params, rid)) as replies:
                async for sample in replies:
                    replied = True
                    self.spend.completion_tokens += sample.completion_tokens
                    text = sample.text
                    logprob = sample.mean_logprob if sample.mean_logprob is not None else 0.0
        finally:
            if not replied:  # cut off (its timeout_s, a disconnect): bill what it generated
                await uncancellable(self._abort(rid))
        return text, logprob

    async def _abort(self, rid: str) -> None:
        """Stop a judge call cut off part-way and add the reply tokens it had generated, as a
        sampling wave's abort does (the engine's own per-request figures are the bill)."""
        try:
            await self.engine.abort(rid)
        except Exception:
            log.exception("aborting judge call %s failed", rid)
        usage = self.engine.undelivered_usage(rid)
        if usage is not None:
            self.spend.completion_tokens += usage.completion_tokens

    def worst_case(self, question: str, candidates: Sequence[str]) -> VerifierSpend:
        """At most what grading these costs: each distinct prompt's tokens, and `max_tokens`
        of reply per prompt (tokenized here exactly as `_ask` will)."""
        prompts = {self.template.format(question=question, candidate=c) for c in candidates}
        tokens = sum(self.engine.tokenize(p).tokens for p in prompts)
        return VerifierSpend(self.spend.model, tokens, self.cfg.max_tokens * len(prompts))

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        asked: dict[str, tuple[str, float]] = {}
        scores = []
        for cand in candidates:
            prompt = self.template.format(question=question, candidate=cand)
            if prompt not in asked:
                asked[prompt] = await self._ask(prompt)
            scores.append(self._read(*asked[prompt], cand))
        return scores

    def _read(self, reply: str, mean_logprob: float, candidate: str) -> float:
        confidence = min(1.0, max(0.0, 2.718281828459045**mean_logprob))
        if self.cfg.read == "answer":
            mine = self.extract(reply)
            return 1.0 if mine is not None and mine == self.extract(candidate) else 0.0
        if self.cfg.read == "yes_no":
            yes = self.pattern.search(reply) is not None
            return confidence if yes else 1.0 - confidence
        found = self.pattern.search(reply)
        if found is None:
            raise VerifierError(f"judge reply has no score: {reply[:60]!r}")
        return float(found.group(1) if found.groups() else found.group(0)) / self.cfg.scale


class ServedVerifier:
    """A tenant's verifier for one request: the kind's scorer, its spend, and its score map.

    Built per request (the scorers are cheap; the engines and clients they use are shared), so
    the spend is this request's alone.
    """

    def __init__(self, cfg: VerifierConfig, scorer: Verifier, score_map: TrafficScoreMap) -> None:
        self.cfg = cfg
        self.label = cfg.label  # what t2.verifier names it
        self.name = getattr(scorer, "name", cfg.label)  # what its failures are reported as
        self.kind = cfg.kind
        self.scorer = scorer
        self.score_map = score_map
        self.stop_at = cfg.stop_at
        self.timeout_s = cfg.timeout_s

    @property
    def spend(self) -> VerifierSpend:
        return getattr(self.scorer, "spend", None) or VerifierSpend()

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        return await self.scorer.score(question, candidates)

    def worst_case(self, question: str, candidates: Sequence[str]) -> VerifierSpend | None:
        """The most scoring these candidates can cost (held before it runs), or None: this
        verifier is not billed (an HTTP service, a checker)."""
        bound = getattr(self.scorer, "worst_case", None)
        return bound(question, candidates) if bound is not None else None

    def p_correct(self, scores: Sequence[float]) -> list[float]:
        return self.score_map.predict(scores)


def load_score_map(path: str | None) -> IsotonicScoreMap | None:
    if path is None:
        return None
    return IsotonicScoreMap.from_dict(json.loads(Path(path).read_text()))


class VerifierBook:
    """The verifiers tenants configured: HTTP clients (rebuilt when a reload changes them),
    score maps (kept per tenant and verifier, refreshed from traffic), and the engines they
    use (the app's generators for judges, its pooling services for reward models)."""

    def __init__(
        self,
        engines: dict[str, EngineService] | None = None,
        pooling: dict[str, PoolingService] | None = None,
    ) -> None:
        self.engines = engines or {}
        self.pooling = pooling or {}
        self._http: dict[tuple[str, str], tuple[VerifierConfig, HttpVerifier]] = {}
        self._score_maps: dict[tuple[str, str], tuple[VerifierConfig, TrafficScoreMap]] = {}
        self._retired: list[HttpVerifier] = []
        self._owns_pooling = False  # given services are their starter's to stop

    def get(
        self, tenant: TenantConfig, name: str | None = None, extractor: str = "last_number"
    ) -> ServedVerifier | None:
        """The tenant's verifier `name` (its first when None) for one request, or None."""
        cfg = tenant.verifier_named(name)
        if cfg is None:
            return None
        key = (tenant.id, cfg.label)
        return ServedVerifier(cfg, self._scorer(key, cfg, extractor), self._score_map(key, cfg))

    def _scorer(self, key: tuple[str, str], cfg: VerifierConfig, extractor: str) -> Verifier:
        if cfg.kind == "checker":
            return ProgrammaticVerifier(cfg.label, get_checker(cfg.checker or ""))
        if cfg.kind == "reward_model":
            pooling = self.pooling.get(cfg.model or "")
            if pooling is None:
                raise VerifierError(f"reward model {cfg.model!r} is not served")
            return RewardModelVerifier(pooling, cfg.template or DEFAULT_TEMPLATE, cfg.label)
        if cfg.kind == "judge":
            engine = self.engines.get(cfg.model or "")
            if engine is None:
                raise VerifierError(f"judge model {cfg.model!r} is not served")
            return JudgeVerifier(engine, cfg, extractor, cfg.label)
        held = self._http.get(key)
        if held is not None and held[0] == cfg:
            return held[1]
        if held is not None:  # requests in flight may still use it: close at shutdown
            self._retired.append(held[1])
        verifier = HttpVerifier(
            cfg.url or "",
            timeout_s=cfg.timeout_s,
            headers=cfg.headers,
            concurrency=cfg.concurrency,
            name=f"verifier {cfg.name} of {key[0]}" if cfg.name else f"verifier of {key[0]}",
        )
        self._http[key] = (cfg, verifier)
        return verifier

    def _score_map(self, key: tuple[str, str], cfg: VerifierConfig) -> TrafficScoreMap:
        held = self._score_maps.get(key)
        if held is not None and held[0].score_map == cfg.score_map:
            return held[1]
        score_map = TrafficScoreMap(load_score_map(cfg.score_map))
        self._score_maps[key] = (cfg, score_map)
        return score_map

    def ready(self) -> bool:
        return all(p.ready() for p in self.pooling.values())

    def failures(self) -> list[str]:
        return [f for p in self.pooling.values() if (f := p.failure()) is not None]

    async def start(self) -> None:
        """Start the reward models; from then on `aclose` stops them too. An app given
        services someone else started (and will stop) never calls this."""
        self._owns_pooling = True
        for pooling in self.pooling.values():
            await pooling.start()

    async def aclose(self) -> None:
        for verifier in [v for _, v in self._http.values()] + self._retired:
            await verifier.aclose()
        self._http.clear()
        self._retired.clear()
        if self._owns_pooling:
            await asyncio.gather(*(pooling.shutdown() for pooling in self.pooling.values()))
