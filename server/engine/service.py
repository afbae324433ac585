"""`EngineService`: the typed facade the sampling loop draws through, one per served model.

It owns the engine's lifecycle when it starts the engine itself (the app's lifespan starts it in
the background, so /healthz answers at once and /readyz turns ready later), reports readiness
and start failures, renders and tokenizes prompts, and draws one wave. What a backend honours
is read from its declared `Capabilities`: a request's seed reaches the engine only where the
backend says it is honoured, and aborted samples' tokens are read only where they are reported.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from typing import Any

from server.engine.base import (
    GenerationOptions,
    Prompt,
    RequestUsage,
    Sample,
    SampleEngine,
    SamplingParams,
)
from server.engine.factory import start_engine
from server.errors import EngineNotReady

log = logging.getLogger("t2serve.engine")
_MASK = 2**64 - 1


def wave_seed(seed: int, wave: int) -> int:
    """The engine seed for one wave of a seeded request: reproducible, and well apart for every
    (seed, wave), because vLLM seeds sample k of a request with `seed + k` (nearby seeds
    would otherwise share samples). SplitMix64 of the pair, in [0, 2**31)."""
    z = (seed * 0x9E3779B97F4A7C15 + wave + 1) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % 2**31


def choice_seed(seed: int, choice: int) -> int:
    """The seed answer `choice` of an n > 1 request runs on: the request's own for the first (so
    n = 1 is unchanged), one well apart for each other, so the n answers differ as OpenAI's and
    vLLM's do and each stays reproducible (a wave's seed comes from it, `wave_seed`)."""
    return seed if choice == 0 else wave_seed(seed, -choice)  # waves are >= 0: no collision


class EngineService:
    """One model's engine: given one, it is used as it is (the caller keeps its lifecycle);
    given none, `start()` builds it from `settings` and `shutdown()` stops it."""

    def __init__(
        self,
        model_id: str,
        settings: Mapping[str, Any],
        engine: SampleEngine | None = None,
    ) -> None:
        self.model_id = model_id
        self._settings = dict(settings)
        self._engine = engine
        self._owned = False
        self._failure: str | None = None

    async def start(self) -> None:
        """Start the configured engine; a failure is logged and reported by /readyz."""
        try:
            self._engine = await start_engine(**self._settings)
            self._owned = True
        except Exception as exc:
            self._failure = f"engine for {self.model_id} failed to start: {exc}"
            log.exception("engine for %s failed to start", self.model_id)

    async def shutdown(self) -> None:
        if self._owned and self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.shutdown()

    @property
    def engine(self) -> SampleEngine | None:
        """The adapter itself (benchmarks drive it directly to measure the server's overhead)."""
        return self._engine

    def ready(self) -> bool:
        return self._engine is not None and self._engine.ready

    def failure(self) -> str | None:
        return self._failure

    def queue_depth(self) -> int | None:
        return None if self._engine is None else self._engine.num_unfinished

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._require().apply_chat_template(messages)

    def honours_seed(self) -> bool:
        return self._require().capabilities.request_seed

    def tokenize(self, text: str, *, chat: bool = False) -> Prompt:
        return self._require().tokenize(text, chat=chat)

    def max_model_len(self) -> int:
        return self._require().max_model_len

    def max_prompt_chars(self) -> int:
        """More characters than this cannot fit the context, whatever they tokenize to."""
        engine = self._require()
        return engine.max_model_len * engine.max_token_chars

    def params(
        self,
        *,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        stop: list[str],
        seed: int | None,
        wave: int,
        options: GenerationOptions | None = None,
    ) -> SamplingParams:
        """One wave's sampling parameters; the seed only where the engine honours it, and
        the request's pass-through `options` on top (the engine validates them)."""
        engine = self._require()
        forwarded = None
        if seed is not None and engine.capabilities.request_seed:
            forwarded = wave_seed(seed, wave)
        base = engine.params(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=forwarded
        )
        if options is None or options == GenerationOptions():
            return base
        return replace(base, **vars(options))

    def honours_structured_outputs(self) -> bool:
        return self._require().capabilities.structured_outputs

    def vocab_size(self) -> int:
        return self._require().vocab_size

    def sample(
        self, prompt: Prompt, n: int, params: SamplingParams, engine_id: str
    ) -> AsyncGenerator[Sample, None]:
        return self._require().sample(prompt, n, params, engine_id)

    async def abort(self, engine_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(engine_id)

    def undelivered_usage(self, engine_id: str) -> RequestUsage | None:
        """What an engine request cost, samples aborted part-way included, where reported."""
        engine = self._engine
        if engine is None or not engine.capabilities.undelivered_usage:
            return None
        return engine.request_usage(engine_id)

    def _require(self) -> SampleEngine:
        if self._engine is None:
            raise EngineNotReady(
                f"The engine for '{self.model_id}' is not running yet; retry shortly."
            )
        return self._engine
