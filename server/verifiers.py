"""Verifiers that do I/O: an HTTP scoring service and a vLLM-served reward model.

Both implement `controller.aggregate.Verifier` (`name`, `async score(question, candidates)`).
They raise on failure; the request loop wraps them in `controller.aggregate.score_candidates`,
which turns any failure into an error string so the answer degrades to a plain vote.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import httpx

from server.config import TenantConfig, VerifierConfig
from server.errors import VerifierError


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


class PoolingEngine(Protocol):
    """The part of vLLM's AsyncLLM a reward verifier needs (`AsyncLLM.encode`)."""

    def encode(self, prompt: Any, pooling_params: Any, request_id: str) -> AsyncIterator[Any]: ...


class VllmRewardVerifier:
    """Score candidates with a reward model served by vLLM's pooling runner.

    The engine is an `AsyncLLM` started with a sequence-classification / reward model
    (`runner="pooling"`). Each candidate is rendered with `template` and encoded with
    `PoolingParams(task=task)`; the score is element `index` of the pooled output
    (a reward head's single logit, or the "correct" label's probability).
    """

    _ids = itertools.count()

    def __init__(
        self,
        engine: PoolingEngine,
        *,
        template: str = "{question}\n\n{candidate}",
        task: str = "classify",
        index: int = -1,
        name: str = "reward_model",
    ) -> None:
        self.engine = engine
        self.template = template
        self.task = task
        self.index = index
        self.name = name

    async def _one(self, question: str, candidate: str) -> float:
        from vllm import PoolingParams  # the engine is vLLM; import only when used

        prompt = self.template.format(question=question, candidate=candidate)
        request_id = f"verify-{next(self._ids)}"
        final = None
        async for output in self.engine.encode(prompt, PoolingParams(task=self.task), request_id):
            final = output
        if final is None:
            raise VerifierError("reward model returned no output")
        data = final.outputs.data
        values = data.flatten().tolist() if hasattr(data, "flatten") else list(data)
        if not values:
            raise VerifierError("reward model returned an empty output")
        return float(values[self.index])

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        return list(await asyncio.gather(*(self._one(question, c) for c in candidates)))


class VerifierBook:
    """Each tenant's configured `HttpVerifier`, built on first use and rebuilt when a config
    reload changes it; `aclose` releases every client (the app's shutdown calls it)."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, tuple[VerifierConfig, HttpVerifier]] = {}
        self._retired: list[HttpVerifier] = []

    def get(self, tenant: TenantConfig) -> HttpVerifier | None:
        cfg = tenant.verifier
        if cfg is None:
            return None
        held = self._by_tenant.get(tenant.id)
        if held is not None and held[0] == cfg:
            return held[1]
        if held is not None:  # requests in flight may still use it: close at shutdown
            self._retired.append(held[1])
        verifier = HttpVerifier(
            cfg.url,
            timeout_s=cfg.timeout_s,
            headers=cfg.headers,
            concurrency=cfg.concurrency,
            name=f"verifier of {tenant.id}",
        )
        self._by_tenant[tenant.id] = (cfg, verifier)
        return verifier

    async def aclose(self) -> None:
        for verifier in [v for _, v in self._by_tenant.values()] + self._retired:
            await verifier.aclose()
        self._by_tenant.clear()
        self._retired.clear()
