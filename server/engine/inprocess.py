"""The default backend: vLLM's `AsyncLLM` in this process (its engine core in a child process).

Why a custom stat logger: the running/waiting request counts and the prefix-cache totals live in
the engine core; they reach this process only as `SchedulerStats` attached to engine outputs.
`_StatsTap` keeps the latest counts and sums the cache queries/hits, while vLLM's own Prometheus
logger still publishes `vllm:*` for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from server.engine.base import CacheStats, RequestUsage, Sample, SamplingParams
from server.engine.config import EngineConfig
from server.engine.errors import EngineDead, EngineError, InvalidSamplingParam, PromptTooLong
from server.engine.params import PromptingMixin, check_context, validate_params

log = logging.getLogger("t2serve.engine")
USAGE_KEPT = 4096  # recent requests whose usage `request_usage` can still report


class _StatsSink:
    """Latest scheduler counts and cumulative prefix-cache totals (written by `_StatsTap`)."""

    def __init__(self) -> None:
        self.num_running = 0
        self.num_waiting = 0
        self.updated_at = 0.0
        self.cache = CacheStats()

    def record(self, stats: Any) -> None:
        self.num_running = int(stats.num_running_reqs)
        self.num_waiting = int(stats.num_waiting_reqs) + int(
            getattr(stats, "num_skipped_waiting_reqs", 0)
        )
        self.updated_at = time.monotonic()
        pcs = getattr(stats, "prefix_cache_stats", None)
        if pcs is not None:  # totals only grow (like counters), even across cache resets
            self.cache.queries += int(pcs.queries)
            self.cache.hits += int(pcs.hits)
            self.cache.requests += int(pcs.requests)


def _stats_tap_factory(sink: _StatsSink) -> Any:
    """A vLLM per-engine stat-logger factory that feeds `sink`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _StatsTap(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                sink.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _StatsTap


def engine_args(cfg: EngineConfig) -> Any:
    """`AsyncEngineArgs` for the config (also what `vllm serve` flags would say)."""
    from vllm import AsyncEngineArgs

    path = Path(cfg.model_path)
    if not (path / "config.json").is_file():
        raise EngineError(f"no model at {cfg.model_path!r} (config.json missing)")
    return AsyncEngineArgs(
        model=str(path),
        served_model_name=[cfg.model_name],
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        gpu_memory_utilization=cfg.kv_cache_memory_fraction,
        kv_cache_memory_bytes=cfg.kv_cache_memory_bytes,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        block_size=cfg.block_size,
        enable_prefix_caching=cfg.enable_prefix_caching,
        seed=cfg.seed,
        enforce_eager=cfg.enforce_eager,
        disable_log_stats=not cfg.log_stats,
    )


class InProcessEngine(PromptingMixin):
    """`SampleEngine` over an in-process vLLM `AsyncLLM`."""

    def __init__(self, cfg: EngineConfig, llm: Any, sink: _StatsSink) -> None:
        self.config = cfg
        self._llm = llm
        self._sink = sink
        self._tokenizer = llm.get_tokenizer()
        self._max_model_len = int(llm.model_config.max_model_len)
        self._active: set[str] = set()
        self._usage: dict[str, RequestUsage] = {}
        self._closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> InProcessEngine:
        """Build the engine (≈ 30 s on the CPU); the event loop keeps serving meanwhile."""
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(cfg)
        sink = _StatsSink()
        started = time.monotonic()
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stats_tap_factory(sink)])
        log.info("engine ready in %.1f s: %s", time.monotonic() - started, cfg.model_path)
        return cls(cfg, llm, sink)

    # -- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self._closed and not self._llm.errored

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def num_running(self) -> int:
        """Requests the engine core is running, as its scheduler last reported."""
        return self._sink.num_running

    @property
    def num_waiting(self) -> int:
        return self._sink.num_waiting

    @property
    def num_unfinished(self) -> int:
        """Requests this process still tracks (parents and n>1 children), updated at once."""
        return int(self._llm.output_processor.get_num_unfinished_requests())

    def cache_stats(self) -> CacheStats:
        c = self._sink.cache
        return CacheStats(queries=c.queries, hits=c.hits, requests=c.requests)

    # -- sampling ----------------------------------------------------------------------------

    def _vllm_params(self, params: SamplingParams, n: int) -> Any:
        from vllm import SamplingParams as VllmSamplingParams

        try:
            return VllmSamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=list(params.stop) or None,
                seed=params.seed,
                ignore_eos=params.ignore_eos,
                logprobs=0,  # the sampled token's logprob only: gives cumulative_logprob
            )
        except ValueError as exc:  # vLLM's own checks, e.g. limits of this build
            raise InvalidSamplingParam(str(exc)) from exc

    async def sample(
        self, prompt: str, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        """n samples as one `AsyncLLM.generate` request, yielded as each one finishes.

        With n > 1 a streamed `RequestOutput` may carry only the children that advanced, so
        samples are tracked by `CompletionOutput.index`. Leaving early aborts the request.
        """
        if self._closed or self._llm.errored:
            raise EngineDead("the engine is not running")
        validate_params(params, n)
        ids = self.encode(prompt)
        check_context(len(ids), params.max_tokens, self._max_model_len)
        vparams = self._vllm_params(params, n)
        done: set[int] = set()
        cached: int | None = None
        usage = self._usage_for(request_id, len(ids))
        self._active.add(request_id)
        try:
            stream = self._llm.generate({"prompt_token_ids": ids}, vparams, request_id)
            async for out in _translate_errors(stream):
                # n > 1 fans out into child requests; each reports its own cache hits. The
                # request's figure is the smallest (the prompt as first computed), so a later
                # sample's value is never higher than an earlier one's: the last is final.
                hits = int(out.num_cached_tokens or 0)
                cached = hits if cached is None else min(cached, hits)
                usage.cached_prompt_tokens = cached
                for c in out.outputs:
                    if c.finish_reason is None or c.index in done:
                        continue
                    done.add(c.index)
                    usage.completion_tokens += len(c.token_ids)
                    if c.finish_reason == "abort":  # cut short: tokens were spent, no sample
                        usage.extra["aborted_samples"] = usage.extra.get("aborted_samples", 0) + 1
                        continue
                    usage.samples += 1
                    yield Sample(
                        index=c.index,
                        text=c.text,
                        completion_tokens=len(c.token_ids),
                        finish_reason=c.finish_reason,
                        prompt_tokens=len(ids),
                        cached_prompt_tokens=cached or 0,
                        cumulative_logprob=c.cumulative_logprob,
                        request_id=request_id,
                    )
        finally:
            self._active.discard(request_id)
            if len(done) < n and not self._llm.errored:
                await asyncio.shield(self._llm.abort(request_id))

    def _usage_for(self, request_id: str, prompt_tokens: int) -> RequestUsage:
        usage = RequestUsage(prompt_tokens=prompt_tokens)
        self._usage[request_id] = usage
        while len(self._usage) > USAGE_KEPT:
            self._usage.pop(next(iter(self._usage)))
        return usage

    def request_usage(self, request_id: str) -> RequestUsage | None:
        """What a recent engine request cost, including samples aborted part-way (their
        tokens were generated even though no sample was delivered)."""
        return self._usage.get(request_id)

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached block (benchmarks start each mode cold); False if blocks in use."""
        return bool(await self._llm.reset_prefix_cache())

    async def abort(self, request_id: str) -> None:
        if not self._llm.errored:
            await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._llm.shutdown)


async def _translate_errors(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """vLLM's exceptions → our typed errors (the server maps those to HTTP statuses)."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    try:
        async for out in stream:
            yield out
    except EngineDeadError as exc:
        raise EngineDead(f"the engine died: {exc}") from exc
    except EngineGenerateError as exc:
        raise EngineError(f"the engine failed this request: {exc.__cause__ or exc}") from exc
    except VLLMClientError as exc:
        text = str(exc)
        if "maximum model length" in text or "context length" in text:
            raise PromptTooLong(-1, -1, -1) from exc
        raise InvalidSamplingParam(text) from exc
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
