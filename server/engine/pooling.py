"""Reward models on vLLM's pooling runner: an in-process `AsyncLLM(runner="pooling")` beside the
generators, or a remote `vllm serve --runner pooling` reached by its /pooling or /score API.

Either way `PoolingService.classify(texts)` returns one score per text and the tokens scored
(billing charges 2·N FLOPs per scored token, or the tenant's price for the model). The CPU
settings that work are recorded in docs/verifiers.md: `task="classify"` on a one-label
`LlamaForSequenceClassification` gives the sigmoid of the last token's logit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from server.config import VerifierModelConfig
from server.engine.inprocess import (
    leave_a_core_for_the_api,
    one_process_executor,
    shutdown_built,
    without_hangups,
)
from server.errors import VerifierError

log = logging.getLogger("t2serve.engine")


@dataclass
class Scored:
    """Scores of some texts and the tokens the model read to produce them."""

    scores: list[float]
    tokens: int


class PoolingService:
    """One configured reward model: its lifecycle, readiness and `classify`."""

    _ids = itertools.count()

    def __init__(self, cfg: VerifierModelConfig, llm: Any | None = None) -> None:
        self.cfg = cfg
        self._llm = llm
        self._owned = False
        self._failure: str | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def model_id(self) -> str:
        return self.cfg.id

    async def start(self) -> None:
        """In-process: build the pooling engine (≈ 40 s on the loaded CPU). Remote: a client."""
        if self.cfg.url is not None:
            self._client = httpx.AsyncClient(base_url=self.cfg.url, timeout=self.cfg.timeout_s)
            return
        # built in a worker thread, as the generators are: the loop keeps serving meanwhile
        building = asyncio.ensure_future(asyncio.to_thread(_start_llm, self.cfg))
        try:
            self._llm = await asyncio.shield(building)
            self._owned = True
        except asyncio.CancelledError:  # the thread cannot be stopped: stop what it builds
            building.add_done_callback(shutdown_built)
            raise
        except Exception as exc:
            self._failure = f"reward model {self.cfg.id} failed to start: {exc}"
            log.exception("reward model %s failed to start", self.cfg.id)

    def ready(self) -> bool:
        if self.cfg.url is not None:
            return self._client is not None
        return self._llm is not None and not self._llm.errored

    def failure(self) -> str | None:
        return self._failure

    async def classify(self, texts: Sequence[str]) -> Scored:
        if self.cfg.url is not None:
            return await self._remote(texts)
        if self._llm is None or self._llm.errored:
            raise VerifierError(f"reward model {self.cfg.id} is not running")
        outs = await asyncio.gather(*(self._one(t) for t in texts))
        return Scored([s for s, _ in outs], sum(n for _, n in outs))

    async def _one(self, text: str) -> tuple[float, int]:
        from vllm import PoolingParams

        assert self._llm is not None
        final = None
        rid = f"rm-{next(self._ids)}"
        async for out in self._llm.encode(text, PoolingParams(task="classify"), rid):
            final = out
        if final is None:
            raise VerifierError(f"reward model {self.cfg.id} returned no output")
        values = final.outputs.data.flatten().tolist()
        if not values:
            raise VerifierError(f"reward model {self.cfg.id} returned an empty output")
        return float(values[-1]), len(final.prompt_token_ids or ())

    async def _remote(self, texts: Sequence[str]) -> Scored:
        """vLLM's /pooling ({"input": [...]} → data[i].data) or /score (text_1 = "", text_2 =
        texts → data[i].score); `usage.prompt_tokens` is what it read."""
        if self._client is None:
            raise VerifierError(f"reward model {self.cfg.id} is not connected")
        name = self.cfg.served_name or self.cfg.id
        if self.cfg.api == "pooling":
            body: dict[str, Any] = {"model": name, "input": list(texts), "task": "classify"}
        else:
            body = {"model": name, "text_1": "", "text_2": list(texts)}
        try:
            reply = await self._client.post(f"/{self.cfg.api}", json=body)
        except httpx.HTTPError as exc:
            raise VerifierError(f"{self.cfg.url}: {type(exc).__name__}") from None
        if reply.status_code // 100 != 2:
            raise VerifierError(f"HTTP {reply.status_code} from {self.cfg.url}/{self.cfg.api}")
        try:
            data = reply.json()
            rows = sorted(data["data"], key=lambda r: r.get("index", 0))
            if self.cfg.api == "pooling":
                scores = [float(_flat(r["data"])[-1]) for r in rows]
            else:
                scores = [float(r["score"]) for r in rows]
            tokens = int((data.get("usage") or {}).get("prompt_tokens", 0))
        except (ValueError, KeyError, TypeError, IndexError):
            raise VerifierError(f"unexpected reply from {self.cfg.url}/{self.cfg.api}") from None
        if len(scores) != len(texts):
            raise VerifierError(f"{len(scores)} scores for {len(texts)} texts")
        return Scored(scores, tokens)

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._owned and self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [value]


def _start_llm(cfg: VerifierModelConfig) -> Any:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    started = time.monotonic()
    leave_a_core_for_the_api()
    args = AsyncEngineArgs(
        model=str(cfg.path),
        served_model_name=[cfg.id],
        runner="pooling",
        dtype="float32",
        max_model_len=cfg.max_model_len,
        kv_cache_memory_bytes=cfg.kv_cache_memory_bytes,
        block_size=32,
        enforce_eager=True,
        enable_chunked_prefill=False,
        disable_log_stats=True,
        distributed_executor_backend=one_process_executor(),
    )
    without_hangups()
    llm = AsyncLLM.from_engine_args(args)
    log.info("reward model ready in %.1f s: %s", time.monotonic() - started, cfg.path)
    return llm
