"""Policies from their spec strings, as written in config and on the command line."""

from __future__ import annotations

from typing import Any

from controller.policy.base import Policy
from controller.policy.online import DEFAULT_TAU, Online
from controller.policy.rules import AdaptiveConsistency, Esc, Fixed, Margin
from controller.policy.t2 import T2

FIXED_ALL = 1_000_000
"""k for "fixed:all": every sample the caps allow (max_samples binds)."""
POLICY_NAMES = ("fixed", "adaptive_consistency", "esc", "margin", "t2", "online")
_ALIASES = {"ac": "adaptive_consistency", "adaptive": "adaptive_consistency"}
_T2_KEYS = {
    "lam": ("lam", float),
    "lambda": ("lam", float),
    "value": ("value_per_correct", float),
    "value_per_correct": ("value_per_correct", float),
    "wave": ("wave", int),
    "first_wave": ("first_wave", int),
    "refit_every": ("refit_every", int),
    "min_history": ("min_history", int),
}
_T2_FLAGS = {
    "upfront": ("upfront", True),
    "norefit": ("refit", False),
    "raw": ("calibrated", False),
}


def _spec_pattern() -> str:
    """The spec grammar as one regular expression, for an API that must say exactly what it
    accepts: every string it matches is a policy `make_policy` builds (lowercase, no spaces,
    numbers without exponents, within their bounds), so a client can check a spec itself, but
    for one rule a pattern without look-ahead (Rust's, Go's) cannot state: each t2 option at
    most once."""
    k = r"(10[01][0-9]|102[0-4]|[1-9][0-9]{0,2})"  # 1..1024
    count = r"[1-9][0-9]{0,3}"  # 1..9999
    num = r"(0|[1-9][0-9]{0,5})(\.[0-9]{1,8})?"  # ≥ 0
    pos = r"([1-9][0-9]{0,5}(\.[0-9]{1,8})?|0\.[0-9]{0,7}[1-9])"  # > 0
    at_least_one = r"([1-9][0-9]{0,3}(\.[0-9]{1,8})?)"  # ≥ 1
    confidence = r"0\.(5[0-9]{0,6}[1-9]|[6-9][0-9]{0,7})"  # in (0.5, 1)
    fraction = r"0\.[0-9]{0,7}[1-9]"  # in (0, 1)
    t2_option = (
        rf"({num}|(lam|lambda)={num}|(value|value_per_correct)={pos}"
        rf"|(wave|first_wave|refit_every|min_history)={count}|upfront|norefit|raw)"
    )
    forms = [
        rf"fixed:({k}|all)",
        rf"(adaptive_consistency|adaptive|ac)(:{confidence})?",
        rf"esc(:{count})?",
        rf"margin(:{at_least_one})?",
        rf"t2(:{t2_option}(,{t2_option}){{0,7}})?",
        rf"online(:{fraction})?",
    ]
    return "^(" + "|".join(forms) + ")$"


SPEC_PATTERN = _spec_pattern()


def is_t2(spec: str) -> bool:
    """True for a t2 spec ('t2' or 't2:...'), the only family a route's router runs."""
    return spec.strip().lower().partition(":")[0] == "t2"


def ignored_on_a_route(spec: str) -> list[str]:
    """The options of a t2 spec a route's router would ignore: all but λ. The router picks its
    own waves from its models' calibration, not t2's online prior. Read off the policy's own
    spec, which lists every option set off its default (a malformed spec raises ValueError)."""
    options = make_policy(spec).spec.partition(":")[2].split(",")
    return [o.partition("=")[0] for o in options if not o.startswith("lam=")]


def check_spec(spec: str) -> str:
    """`spec` if `make_policy` builds it, else a ValueError saying why (config and request
    checks alike)."""
    try:
        make_policy(spec)
    except (ValueError, KeyError) as exc:
        raise ValueError(str(exc)) from None
    return spec


def _number(text: str, kind: type, spec: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"bad number {text!r} in policy {spec!r}") from None


def make_policy(spec: str, **overrides: Any) -> Policy:
    """Build a policy from "fixed:5", "adaptive_consistency[:C]", "esc[:w]", "margin[:m]",
    "t2[:...]" or "online[:τ]" (controller.policy.online).

    t2 takes comma-separated options after the colon: a bare number is λ; `lam=`, `value=`,
    `wave=`, `first_wave=`, `refit_every=`, `min_history=`; flags `upfront`, `norefit`,
    `raw` (no calibration). Keyword `overrides` go to the constructor (e.g. t2's `prior`).
    Raises ValueError with a one-line reason for anything malformed.
    """
    name, _, params = spec.strip().partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    params = params.strip()
    if name == "fixed":
        if not params:
            raise ValueError("fixed needs k, e.g. fixed:5 (or fixed:all)")
        if params.lower() == "all":
            return Fixed(FIXED_ALL, label="fixed:all")
        return Fixed(_number(params, int, spec))
    if name == "adaptive_consistency":
        threshold = _number(params, float, spec) if params else 0.95
        return AdaptiveConsistency(threshold, **overrides)
    if name == "esc":
        return Esc(_number(params, int, spec) if params else 5, **overrides)
    if name == "margin":
        return Margin(_number(params, float, spec) if params else 4.0, **overrides)
    if name == "t2":
        kwargs: dict[str, Any] = {}
        setting: Any
        for part in filter(None, (p.strip() for p in params.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            if not eq and key in _T2_FLAGS:
                field, setting = _T2_FLAGS[key]
            elif not eq:
                field, setting = "lam", _number(key, float, spec)
            elif key in _T2_KEYS:
                field, kind = _T2_KEYS[key]
                setting = _number(value.strip(), kind, spec)
            else:
                raise ValueError(f"unknown t2 option {key!r} in {spec!r}")
            if field in kwargs:  # set twice: which one was meant?
                named = key if key in _T2_FLAGS else field
                raise ValueError(f"t2 option {named!r} given twice in {spec!r}")
            kwargs[field] = setting
        kwargs.update(overrides)
        return T2(**kwargs)
    if name == "online":
        return Online(_number(params, float, spec) if params else DEFAULT_TAU, **overrides)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
