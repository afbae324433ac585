"""Typed test doubles for fast unit tests of the serving layer and the wave loop.

`ScriptedEngine` implements the `SampleEngine` protocol (server/engine/base.py) without vLLM:
each sample's text comes from a script, and it "generates" one token per `token_s` seconds, so
streaming, keep-alives, deadlines and disconnects can be tested in well under a second while
the token accounting stays exact (aborted samples report the tokens they got to).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Unpack

from server.engine.base import (
    CacheStats,
    Capabilities,
    ParamOverrides,
    Prompt,
    RequestUsage,
    Sample,
    SamplingParams,
)
from server.engine.config import SamplingDefaults
from server.engine.params import check_context, resolve_params
from server.errors import EngineDead

Script = Callable[[int], str]
"""Sample number (0, 1, 2, … over the engine's life) → that sample's text."""


def cycle(*texts: str) -> Script:
    return lambda i: texts[i % len(texts)]


@dataclass
class Call:
    """One `sample` call as the engine saw it."""

    request_id: str
    prompt: Prompt
    n: int
    params: SamplingParams


@dataclass
class ScriptedEngine:
    """A `SampleEngine` whose samples are scripted texts, one character = one token."""

    script: Script = field(default_factory=lambda: cycle("A: 1"))
    token_s: float = 0.0
    context: int = 512
    request_seed: bool = False
    structured_outputs: bool = False  # it cannot constrain its scripts, but may claim to
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    dead: bool = False
    _usage: dict[str, RequestUsage] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _running: int = 0

    @property
    def ready(self) -> bool:
        return not self.dead

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            request_seed=self.request_seed,
            undelivered_usage=True,
            structured_outputs=self.structured_outputs,
        )

    @property
    def max_model_len(self) -> int:
        return self.context

    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return 0

    @property
    def num_unfinished(self) -> int:
        return self._running

    def params(self, **overrides: Unpack[ParamOverrides]) -> SamplingParams:
        return resolve_params(SamplingDefaults(), **overrides)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        named = [(m["role"] + (f":{m['name']}" if "name" in m else ""), m) for m in messages]
        return "".join(f"<{who}>{m['content']}" for who, m in named) + "<assistant>"

    def count_tokens(self, prompt: str) -> int:
        return len(prompt)

    @property
    def max_token_chars(self) -> int:
        return 1  # one character, one token

    @property
    def vocab_size(self) -> int:
        return 0x110000  # token ids are code points

    def tokenize(self, prompt: str, *, chat: bool = False) -> Prompt:
        return Prompt(prompt, tuple(ord(c) for c in prompt), chat)

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        if self.dead:
            raise EngineDead("the scripted engine is dead")
        ready = prompt if isinstance(prompt, Prompt) else self.tokenize(prompt)
        if not isinstance(prompt, Prompt):
            check_context(ready.tokens, params.max_tokens, self.context)
        self.calls.append(Call(request_id, ready, n, params))
        usage = self._usage[request_id] = RequestUsage(prompt_tokens=ready.tokens)
        texts = [self.script(next(self._counter))[: params.max_tokens] for _ in range(n)]
        done: set[int] = set()
        self._running += 1
        started = asyncio.get_running_loop().time()
        try:
            for index in sorted(range(n), key=lambda i: len(texts[i])):
                text = texts[index]
                wait = started + len(text) * self.token_s - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)
                done.add(index)
                usage.completion_tokens += len(text)
                usage.samples += 1
                yield Sample(
                    index=index,
                    text=text,
                    completion_tokens=len(text),
                    finish_reason="stop",
                    prompt_tokens=ready.tokens,
                    request_id=request_id,
                )
        finally:
            self._running -= 1
            elapsed = asyncio.get_running_loop().time() - started
            reached = int(elapsed / self.token_s) if self.token_s else 0
            for index in set(range(n)) - done:  # cut short: the tokens generated so far count
                usage.completion_tokens += min(len(texts[index]), reached)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def cache_stats(self) -> CacheStats:
        return CacheStats()

    def request_usage(self, request_id: str) -> RequestUsage | None:
        return self._usage.get(request_id)

    async def shutdown(self) -> None:
        self.dead = True
