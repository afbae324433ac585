"""Remote backend: OpenAI-compatible upstreams (`vllm serve`, SGLang) over httpx.

How a deployment grows past one accelerator: many engine replicas behind one controller tier.
Each engine request goes to the replica with the fewest outstanding requests (ties: the next in
turn), streams `/v1/completions` with `n` choices, and closing that stream is the abort (vLLM
aborts a request when its client disconnects). Connection errors retry on another replica with
exponential backoff; timeouts and 5xx answers become typed errors.

Token accounting: the final usage chunk (`stream_options.include_usage`) gives prompt tokens
and, when the upstream runs with `--enable-prompt-tokens-details`, the cached prompt tokens;
per-sample completion tokens and cumulative logprob come from each choice's sampled-token
logprobs (`logprobs=0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server.engine.base import (
    CacheStats,
    Capabilities,
    Prompt,
    RequestUsage,
    Sample,
    SamplingParams,
    TokenLogprob,
)
from server.engine.config import EngineConfig
from server.engine.params import PromptingMixin, validate_params
from server.errors import (
    EngineError,
    InvalidSamplingParam,
    PromptTooLong,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger("t2serve.engine.remote")


@dataclass
class Upstream:
    """One replica and how many engine requests it has in flight from us."""

    url: str
    outstanding: int = 0
    healthy: bool = True
    failures: int = 0


@dataclass
class _Choice:
    text: str = ""
    tokens: int = 0
    logprob: float = 0.0
    has_logprobs: bool = False
    finish_reason: str | None = None
    tokens_lp: list[TokenLogprob] = field(default_factory=list)

    def absorb(self, c: dict[str, Any]) -> bool:
        """Add one streamed chunk of this choice; True when it carries the choice's finish."""
        self.text += c.get("text") or ""
        lp = c.get("logprobs") or {}
        token_lps = lp.get("token_logprobs") or []
        self.tokens += len(lp.get("tokens") or token_lps)
        if token_lps:
            self.has_logprobs = True
            self.logprob += sum(x for x in token_lps if x is not None)
            self.tokens_lp.extend(_token_logprobs(lp))
        if c.get("finish_reason") is not None and self.finish_reason is None:
            self.finish_reason = c["finish_reason"]
            return True
        return False


class RemoteEngine(PromptingMixin):
    """`SampleEngine` over OpenAI-compatible HTTP upstreams."""

    def __init__(self, cfg: EngineConfig, client: httpx.AsyncClient, tokenizer: Any) -> None:
        self.config = cfg
        self._client = client
        self._tokenizer = tokenizer
        self.upstreams = [Upstream(url) for url in cfg.remote.urls]
        self._turn = itertools.count()
        self._max_model_len = cfg.max_model_len
        self._streams: dict[str, set[asyncio.Task[Any]]] = {}
        self._cache = CacheStats()
        self._usage: dict[str, RequestUsage] = {}
        self._closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> RemoteEngine:
        """Load the tokenizer locally (prompt counting, chat template) and reach an upstream."""
        from transformers import AutoTokenizer

        if not Path(cfg.model_path).is_dir():
            raise EngineError(f"no tokenizer at {cfg.model_path!r}: the remote backend needs it")
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, cfg.model_path)
        r = cfg.remote
        headers = {"Authorization": f"Bearer {r.api_key}"} if r.api_key else {}
        client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(r.timeout_s, connect=r.connect_timeout_s),
            limits=httpx.Limits(max_connections=r.max_connections),
        )
        engine = cls(cfg, client, tokenizer)
        await engine.refresh()
        return engine

    async def refresh(self) -> None:
        """Probe every upstream's /models; learn the context length. Fails if none answers."""
        results = await asyncio.gather(
            *(self._probe(u) for u in self.upstreams), return_exceptions=True
        )
        lens = [r for r in results if isinstance(r, int)]
        if not lens:
            raise UpstreamError(f"no upstream answered: {results[0]}")
        self._max_model_len = min(min(lens), self.config.max_model_len)

    async def _probe(self, upstream: Upstream) -> int:
        try:
            resp = await self._client.get(f"{upstream.url}/models")
            resp.raise_for_status()
        except httpx.HTTPError:
            upstream.healthy = False
            raise
        upstream.healthy = True
        for model in resp.json().get("data", []):
            if model.get("id") == self.config.model_name:
                return int(model.get("max_model_len") or self.config.max_model_len)
        raise UpstreamError(f"{upstream.url} does not serve {self.config.model_name!r}")

    # -- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self._closed and any(u.healthy for u in self.upstreams)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def num_running(self) -> int:
        """Engine requests this adapter has in flight across all upstreams."""
        return sum(u.outstanding for u in self.upstreams)

    @property
    def num_waiting(self) -> int:
        return 0  # queueing happens inside the upstreams; their /metrics report it

    @property
    def num_unfinished(self) -> int:
        return self.num_running

    @property
    def capabilities(self) -> Capabilities:
        # the upstream reports every choice's tokens, aborted ones included, in its usage
        # structured outputs: passed through as `response_format` (vLLM and SGLang enforce it)
        return Capabilities(
            request_seed=self.config.remote.forward_seed,
            undelivered_usage=True,
            structured_outputs=True,
        )

    async def upstream_counts(self) -> tuple[int, int]:
        """Running and waiting requests summed over the upstreams' own `/metrics` (vLLM's
        `vllm:num_requests_running` / `vllm:num_requests_waiting`); unreachable ones count 0."""
        running = waiting = 0.0
        for u in self.upstreams:
            root = u.url.removesuffix("/v1")
            try:
                resp = await self._client.get(f"{root}/metrics")
                resp.raise_for_status()
            except httpx.HTTPError:
                continue
            for line in resp.text.splitlines():
                name, _, value = line.partition(" ")
                if name.startswith("vllm:num_requests_running"):
                    running += float(value.split()[0])
                elif name.startswith("vllm:num_requests_waiting"):
                    waiting += float(value.split()[0])
        return int(running), int(waiting)

    def cache_stats(self) -> CacheStats:
        c = self._cache
        return CacheStats(queries=c.queries, hits=c.hits, requests=c.requests)

    # -- balancing ---------------------------------------------------------------------------

    def pick(self, exclude: set[str] = frozenset()) -> Upstream:  # type: ignore[assignment]
        """Least outstanding requests among healthy replicas; round-robin on ties."""
        pool = [u for u in self.upstreams if u.url not in exclude] or list(self.upstreams)
        healthy = [u for u in pool if u.healthy] or pool
        turn = next(self._turn)
        order = sorted(
            range(len(healthy)),
            key=lambda i: (healthy[i].outstanding, (i - turn) % len(healthy)),
        )
        return healthy[order[0]]

    # -- sampling ----------------------------------------------------------------------------

    def _body(self, prompt: Prompt, n: int, params: SamplingParams) -> dict[str, Any]:
        """The upstream's completions request. A chat prompt is sent as the text its template
        rendered, special tokens included, so the upstream is told to add none (vLLM's chat
        endpoint does the same); only where the tokenizer would add any, so an upstream that
        does not know vLLM's `add_special_tokens` never sees it for nothing."""
        body: dict[str, Any] = {
            "model": self.config.model_name,
            "prompt": prompt.text,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "logprobs": params.top_logprobs or 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:
            body["ignore_eos"] = True  # a vLLM extension of the OpenAI API
        if prompt.chat and self.adds_special_tokens:
            body["add_special_tokens"] = False  # also a vLLM extension
        body.update(_pass_through(params))
        return body

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        """n samples as one upstream request, yielded as each choice finishes."""
        if self._closed:
            raise EngineError("the remote engine is shut down")
        validate_params(params, n)
        ready = self.prepared(prompt, params.max_tokens, self._max_model_len)
        prompt_tokens = ready.tokens
        body = self._body(ready, n, params)
        queue: asyncio.Queue[Sample | BaseException | None] = asyncio.Queue()
        task = asyncio.create_task(self._stream(body, n, request_id, prompt_tokens, queue))
        self._streams.setdefault(request_id, set()).add(task)
        got = 0
        try:
            while got < n:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                got += 1
                yield item
            if not task.cancelled():
                await task
        finally:
            if not task.done():
                task.cancel()  # closes the HTTP stream: the upstream aborts the request
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            tasks = self._streams.get(request_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    self._streams.pop(request_id, None)

    async def _stream(
        self,
        body: dict[str, Any],
        n: int,
        request_id: str,
        prompt_tokens: int,
        out: asyncio.Queue[Sample | BaseException | None],
    ) -> None:
        """Run one upstream request (with retries before any output) and feed `out`."""
        try:
            await self._attempts(body, n, request_id, prompt_tokens, out)
        finally:
            out.put_nowait(None)  # done, failed or aborted: the consumer's stream ends

    async def _attempts(
        self,
        body: dict[str, Any],
        n: int,
        request_id: str,
        prompt_tokens: int,
        out: asyncio.Queue[Sample | BaseException | None],
    ) -> None:
        r = self.config.remote
        tried: set[str] = set()
        delay = r.backoff_s
        for attempt in range(r.retries + 1):
            upstream = self.pick(tried)
            tried.add(upstream.url)
            upstream.outstanding += 1
            try:
                await self._consume(upstream, body, n, request_id, prompt_tokens, out)
                upstream.healthy, upstream.failures = True, 0
                return
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                upstream.failures += 1
                upstream.healthy = False
                if attempt == r.retries:
                    await out.put(UpstreamError(f"no upstream reachable: {exc}"))
                    return
                log.warning("upstream %s unreachable (%s); retrying", upstream.url, exc)
                await asyncio.sleep(delay)
                delay *= 2
                if len(tried) >= len(self.upstreams):
                    tried.clear()
            except httpx.TimeoutException as exc:
                await out.put(UpstreamTimeout(f"upstream {upstream.url} timed out: {exc!r}"))
                return
            except EngineError as exc:
                await out.put(exc)
                return
            finally:
                upstream.outstanding -= 1
        await out.put(None)

    async def _consume(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        n: int,
        request_id: str,
        prompt_tokens: int,
        out: asyncio.Queue[Sample | BaseException | None],
    ) -> None:
        choices = [_Choice() for _ in range(n)]
        headers = {"X-Request-Id": request_id}
        finished: list[int] = []
        async with self._client.stream(
            "POST", f"{upstream.url}/completions", json=body, headers=headers
        ) as resp:
            if resp.status_code >= 400:
                raise _http_error(resp.status_code, (await resp.aread()).decode(errors="replace"))
            usage: dict[str, Any] | None = None
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    err = chunk["error"]
                    raise _http_error(int(err.get("code") or 500), str(err.get("message")))
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for c in chunk.get("choices", []):
                    if choices[int(c["index"])].absorb(c):
                        finished.append(int(c["index"]))
        # Choices are released once usage (with the cached-token count) is known.
        details = (usage or {}).get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        reported_prompt = int((usage or {}).get("prompt_tokens") or prompt_tokens)
        counted = sum(ch.tokens for ch in choices)
        self._usage[request_id] = RequestUsage(
            prompt_tokens=reported_prompt,
            cached_prompt_tokens=cached,
            completion_tokens=counted,
            samples=len(finished),
        )
        reported = (usage or {}).get("completion_tokens")
        if reported is not None:  # the upstream's own total: a cross-check of the per-sample count
            self._usage[request_id].extra["upstream_completion_tokens"] = int(reported)
            if int(reported) != counted:
                log.warning(
                    "request %s: upstream reports %s completion tokens, samples carry %s",
                    request_id,
                    reported,
                    counted,
                )
        while len(self._usage) > 4096:
            self._usage.pop(next(iter(self._usage)))
        self._cache.requests += 1
        self._cache.queries += reported_prompt
        self._cache.hits += cached
        for i in finished:
            ch = choices[i]
            await out.put(
                Sample(
                    index=i,
                    text=ch.text,
                    completion_tokens=ch.tokens,
                    finish_reason=ch.finish_reason,
                    prompt_tokens=reported_prompt,
                    cached_prompt_tokens=cached,
                    cumulative_logprob=ch.logprob if ch.has_logprobs else None,
                    request_id=request_id,
                    logprobs=tuple(ch.tokens_lp),  # the response shows them only if asked
                )
            )

    def request_usage(self, request_id: str) -> RequestUsage | None:
        """What a recent, completed upstream request cost (None if it was cut off)."""
        return self._usage.get(request_id)

    async def abort(self, request_id: str) -> None:
        """Close the request's upstream streams; the upstream aborts it on disconnect."""
        for task in list(self._streams.get(request_id, ())):
            task.cancel()

    async def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            for tasks in list(self._streams.values()):
                for task in tasks:
                    task.cancel()
            await self._client.aclose()


def _pass_through(params: SamplingParams) -> dict[str, Any]:
    """The sampling fields beyond OpenAI's basics, only where set (vLLM's names for them)."""
    body: dict[str, Any] = {}
    defaults = SamplingParams()
    for name in (
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "min_tokens",
    ):
        if getattr(params, name) != getattr(defaults, name):
            body[name] = getattr(params, name)
    if params.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in params.logit_bias}
    if params.stop_token_ids:
        body["stop_token_ids"] = list(params.stop_token_ids)
    spec = params.structured
    if spec is not None and spec.json_schema is not None:
        schema = json.loads(spec.json_schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "t2serve", "schema": schema},
        }
    elif spec is not None:
        body["response_format"] = {"type": "json_object"}
    return body


def _token_logprobs(lp: dict[str, Any]) -> list[TokenLogprob]:
    """A completions chunk's `logprobs` (tokens, token_logprobs, top_logprobs) → ours."""
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        ranked = sorted((top or {}).items(), key=lambda kv: -float(kv[1]))
        out.append(
            TokenLogprob(
                token=str(token),
                logprob=float(value) if value is not None else float("-inf"),
                top=tuple((str(t), float(v)) for t, v in ranked),
            )
        )
    return out


def _http_error(status: int, text: str) -> EngineError:
    """An upstream error answer → our typed error."""
    try:
        message = json.loads(text).get("error", {}).get("message") or text
    except (ValueError, AttributeError):
        message = text
    message = str(message)[:500]
    if status == 400 and ("context length" in message or "maximum model length" in message):
        return PromptTooLong(-1, -1, -1)
    if 400 <= status < 500:
        return InvalidSamplingParam(f"upstream rejected the request ({status}): {message}")
    if status == 504:
        return UpstreamTimeout(f"upstream timed out ({status}): {message}")
    return UpstreamError(f"upstream failed ({status}): {message}", upstream_status=status)
