"""Sampling parameters: request values over config defaults, checked before the engine sees
them so a bad value becomes `InvalidSamplingParam` (400) rather than an engine-side failure."""

from __future__ import annotations

import math
from typing import Any

from server.engine.base import Prompt, SamplingParams
from server.engine.config import EngineConfig, SamplingDefaults
from server.errors import InvalidSamplingParam, PromptTooLong

MAX_STOP_SEQUENCES = 16


def resolve_params(
    defaults: SamplingDefaults,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: list[str] | tuple[str, ...] | None = None,
    seed: int | None = None,
    ignore_eos: bool = False,
) -> SamplingParams:
    """Fill unset fields from the defaults, then validate."""
    params = SamplingParams(
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        stop=tuple(defaults.stop if stop is None else stop),
        seed=seed,
        ignore_eos=ignore_eos,
    )
    validate_params(params)
    return params


def validate_params(params: SamplingParams, n: int = 1) -> None:
    """Raise `InvalidSamplingParam` naming the first bad field."""

    def bad(param: str, why: str) -> InvalidSamplingParam:
        return InvalidSamplingParam(f"Invalid '{param}': {why}", param=param)

    t = params.temperature
    if not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
        raise bad("temperature", f"must be a finite number ≥ 0, got {t!r}")
    p = params.top_p
    if not isinstance(p, int | float) or not math.isfinite(p) or not 0 < p <= 1:
        raise bad("top_p", f"must be in (0, 1], got {p!r}")
    if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
        raise bad("max_tokens", f"must be an integer ≥ 1, got {params.max_tokens!r}")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise bad("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise bad("stop", "stop sequences must be non-empty strings")
    if params.seed is not None and (not isinstance(params.seed, int) or params.seed < 0):
        raise bad("seed", f"must be a non-negative integer, got {params.seed!r}")
    if not isinstance(n, int) or n < 1:
        raise bad("n", f"must be an integer ≥ 1, got {n!r}")


def check_context(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """The prompt and its completion must fit the context window."""
    if prompt_tokens + max_tokens > max_model_len:
        raise PromptTooLong(prompt_tokens, max_tokens, max_model_len)


class PromptingMixin:
    """What every backend does the same way: sampling params from the config's defaults, and
    prompts rendered and counted with the model's own tokenizer."""

    config: EngineConfig
    _tokenizer: Any
    _longest_token: int | None = None

    @property
    def max_token_chars(self) -> int:
        """The longest token's text, in characters (vocabulary and added tokens): no token
        covers more, so a prompt of more than max_model_len × this many characters cannot fit
        and is refused without tokenizing it (20 MB of text took 30 s to tokenize)."""
        if self._longest_token is None:
            vocab = self._tokenizer.get_vocab()
            self._longest_token = max((len(token) for token in vocab), default=1)
        return max(1, self._longest_token)

    def params(
        self,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | tuple[str, ...] | None = None,
        seed: int | None = None,
        ignore_eos: bool = False,
    ) -> SamplingParams:
        return resolve_params(
            self.config.defaults,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            ignore_eos=ignore_eos,
        )

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return str(
            self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        )

    def encode(self, prompt: str) -> list[int]:
        """Token ids exactly as the engine sees the text prompt."""
        return list(self._tokenizer.encode(prompt))

    def count_tokens(self, prompt: str) -> int:
        return len(self.encode(prompt))

    def tokenize(self, prompt: str) -> Prompt:
        return Prompt(prompt, tuple(self.encode(prompt)))

    def prepared(self, prompt: str | Prompt, max_tokens: int, max_model_len: int) -> Prompt:
        """A `Prompt` for `sample`: text is tokenized and checked against the context here;
        a `Prompt` was checked by whoever tokenized it, once for all of its waves."""
        if isinstance(prompt, Prompt):
            return prompt
        ready = self.tokenize(prompt)
        check_context(ready.tokens, max_tokens, max_model_len)
        return ready
