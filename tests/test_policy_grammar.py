"""The policy-spec grammar the API publishes (`SPEC_PATTERN`) says exactly what is accepted:
every string it matches builds a policy, and what it refuses includes each malformed form."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.aggregate import get_extractor
from controller.aggregate.extract import CHAIN_PATTERN
from controller.policy.factory import SPEC_PATTERN, make_policy
from controller.policy.t2 import T2

T2_OPTIONS = (
    "lam",
    "value_per_correct",
    "wave",
    "first_wave",
    "refit_every",
    "min_history",
    "upfront",
    "refit",
    "calibrated",
)


@settings(max_examples=400, deadline=None)
@given(st.from_regex(SPEC_PATTERN, fullmatch=True))
def test_every_spec_the_grammar_admits_builds_a_policy(spec: str) -> None:
    """...and the policy's own `spec` (a replay's label) builds the same policy again: a
    label never drops an option that ran (t2's `first_wave=20` once printed as plain λ). The
    one rule the pattern cannot state: a t2 option given twice is refused, not read as the
    last."""
    try:
        policy = make_policy(spec)
    except ValueError as exc:
        assert "given twice" in str(exc), spec
        return
    again = make_policy(policy.spec)
    assert again.spec == policy.spec
    if isinstance(policy, T2):
        assert isinstance(again, T2)
        for name in T2_OPTIONS:
            assert getattr(again, name) == getattr(policy, name), (spec, name)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(CHAIN_PATTERN, fullmatch=True))
def test_every_extractor_chain_the_grammar_admits_exists(name: str) -> None:
    assert callable(get_extractor(name))  # an unknown name would raise ValueError


@pytest.mark.parametrize(
    "spec",
    [
        "t2",
        "t2:0.01",
        "t2:lam=0.02,first_wave=2",
        "t2:upfront,wave=4",
        "fixed:8",
        "fixed:all",
        "fixed:1024",
        "esc",
        "esc:5",
        "ac",
        "adaptive_consistency:0.95",
        "margin",
        "margin:4",
        "online",
        "online:0.01",
    ],
)
def test_documented_specs_are_admitted(spec: str) -> None:
    assert re.match(SPEC_PATTERN, spec)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "T2",
        " t2",
        "t2:lam=inf",
        "t2:lam=nan",
        "t2:lam=-1",
        "t2:1e-4",
        "t2:wave=0",
        "t2:refit_every=0",
        "t2:colour=red",
        "t2:value=0",
        "fixed:0",
        "fixed:1025",
        "fixed:abc",
        "fixed",
        "esc:0",
        "margin:0.5",
        "adaptive_consistency:0.5",
        "adaptive_consistency:1",
        "oracle",
        "t2\ud800",
        "online:0",
        "online:1",
        "online:1e-3",
        "online:0.0",
    ],
)
def test_malformed_specs_are_refused(spec: str) -> None:
    assert not re.match(SPEC_PATTERN, spec)


@pytest.mark.parametrize(
    "spec",
    [
        "t2:lam=0.1,lam=0.2",
        "t2:0.1,lambda=0.2",
        "t2:value=2,value_per_correct=3",
        "t2:wave=2,first_wave=3,wave=4",
        "t2:upfront,upfront",
        "t2:raw,norefit,raw",
    ],
)
def test_a_t2_option_given_twice_is_refused(spec: str) -> None:
    """Reading the last would drop the first without a word."""
    with pytest.raises(ValueError, match="given twice"):
        make_policy(spec)
