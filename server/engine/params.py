"""Sampling parameters: request values over config defaults, checked before the engine sees
them so a bad value becomes `InvalidSamplingParam` (400) rather than an engine-side failure."""

from __future__ import annotations

import math
from typing import Any, Unpack

from server.engine.base import ParamOverrides, Prompt, SamplingParams
from server.engine.config import EngineConfig, SamplingDefaults
from server.errors import InvalidSamplingParam, PromptTooLong

MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and vLLM's default max_logprobs


def resolve_params(
    defaults: SamplingDefaults, **overrides: Unpack[ParamOverrides]
) -> SamplingParams:
    """Fill unset fields from the defaults, then validate."""

    def pick(name: str, default: Any) -> Any:
        value = overrides.get(name)
        return default if value is None else value

    params = SamplingParams(
        temperature=pick("temperature", defaults.temperature),
        top_p=pick("top_p", defaults.top_p),
        max_tokens=pick("max_tokens", defaults.max_tokens),
        stop=tuple(pick("stop", defaults.stop)),
        seed=overrides.get("seed"),
        ignore_eos=bool(overrides.get("ignore_eos", False)),
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
    _validate_options(params, bad)


def _validate_options(params: SamplingParams, bad: Any) -> None:
    """The pass-through fields, by vLLM's own rules (the API's models check them first)."""
    if not isinstance(params.top_k, int) or params.top_k < -1:
        raise bad("top_k", f"must be -1, 0 (off) or a positive integer, got {params.top_k!r}")
    checks = (
        ("min_p", params.min_p, 0.0, 1.0),
        ("presence_penalty", params.presence_penalty, -2.0, 2.0),
        ("frequency_penalty", params.frequency_penalty, -2.0, 2.0),
    )
    for name, value, low, high in checks:
        number = isinstance(value, int | float) and math.isfinite(value)
        if not number or not low <= value <= high:
            raise bad(name, f"must be in [{low:g}, {high:g}], got {value!r}")
    rp = params.repetition_penalty
    if not isinstance(rp, int | float) or not math.isfinite(rp) or rp <= 0:
        raise bad("repetition_penalty", f"must be a finite number > 0, got {rp!r}")
    if not isinstance(params.min_tokens, int) or params.min_tokens < 0:
        raise bad("min_tokens", f"must be an integer ≥ 0, got {params.min_tokens!r}")
    if params.min_tokens > params.max_tokens:
        raise bad(
            "min_tokens",
            f"must be at most max_tokens ({params.max_tokens}), got {params.min_tokens}",
        )
    for token, bias in params.logit_bias:
        if not isinstance(token, int) or token < 0:
            raise bad("logit_bias", f"keys must be token ids ≥ 0, got {token!r}")
        if not isinstance(bias, int | float) or not math.isfinite(bias) or abs(bias) > 100:
            raise bad("logit_bias", f"biases must be in [-100, 100], got {bias!r}")
    if any(not isinstance(t, int) or t < 0 for t in params.stop_token_ids):
        raise bad("stop_token_ids", "must be token ids ≥ 0")
    k = params.top_logprobs
    if k is not None and (not isinstance(k, int) or not 0 <= k <= MAX_TOP_LOGPROBS):
        raise bad("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {k!r}")


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
    _adds_special: bool | None = None

    @property
    def max_token_chars(self) -> int:
        """The longest token's text, in characters (vocabulary and added tokens): no token
        covers more, so a prompt of more than max_model_len × this many characters cannot fit
        and is refused without tokenizing it (20 MB of text took 30 s to tokenize)."""
        if self._longest_token is None:
            vocab = self._tokenizer.get_vocab()
            self._longest_token = max((len(token) for token in vocab), default=1)
        return max(1, self._longest_token)

    def params(self, **overrides: Unpack[ParamOverrides]) -> SamplingParams:
        return resolve_params(self.config.defaults, **overrides)

    @property
    def vocab_size(self) -> int:
        """Every token id the tokenizer knows (added tokens included) is below this."""
        return len(self._tokenizer)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return str(
            self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        )

    def encode(self, prompt: str, *, chat: bool = False) -> list[int]:
        """Token ids exactly as the engine sees the text prompt (`SampleEngine.tokenize`)."""
        return list(self._tokenizer.encode(prompt, add_special_tokens=not chat))

    def count_tokens(self, prompt: str) -> int:
        return len(self.encode(prompt))

    def tokenize(self, prompt: str, *, chat: bool = False) -> Prompt:
        return Prompt(prompt, tuple(self.encode(prompt, chat=chat)), chat)

    @property
    def adds_special_tokens(self) -> bool:
        """Whether the tokenizer puts special tokens (a BOS) around a plain text prompt (asked
        once: the remote backend reads it for every chat wave)."""
        if self._adds_special is None:
            self._adds_special = bool(self._tokenizer.encode("", add_special_tokens=True))
        return self._adds_special

    def prepared(self, prompt: str | Prompt, max_tokens: int, max_model_len: int) -> Prompt:
        """A `Prompt` for `sample`: text is tokenized and checked against the context here;
        a `Prompt` was checked by whoever tokenized it, once for all of its waves."""
        if isinstance(prompt, Prompt):
            return prompt
        ready = self.tokenize(prompt)
        check_context(ready.tokens, max_tokens, max_model_len)
        return ready
