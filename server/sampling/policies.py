"""Policies by name: validation of a request's controller names, and the bounded policy book.

A t2 policy learns a prior from the traffic it serves, so it must outlive one request; but the
spec string comes from the client (`t2.policy`), so the book that keeps policies must not grow
with the number of distinct specs. It keeps at most `capacity` of them, least recently used
out first; each holds only a bounded count table (controller.policy.t2).
"""

from __future__ import annotations

from collections import OrderedDict

from controller.aggregate import get_extractor
from controller.aggregate.vote import METHODS
from controller.policy.base import Policy
from controller.policy.factory import make_policy
from controller.policy.rules import Fixed
from server.errors import ControllerOptionError

DEFAULT_CAPACITY = 256
FIXED_ALL_SPEC = "fixed:all"  # every sample the caps allow: no number of its own


def check_controller_names(policy: str, aggregator: str, extractor: str) -> None:
    """Raise `ControllerOptionError` (400) naming the `t2` field that is unknown or malformed."""
    try:
        make_policy(policy)
    except (ValueError, KeyError) as exc:
        raise ControllerOptionError("policy", str(exc)) from None
    if aggregator not in METHODS:
        raise ControllerOptionError(
            "aggregator", f"unknown aggregator {aggregator!r}; choose from {', '.join(METHODS)}"
        )
    try:
        get_extractor(extractor)
    except ValueError as exc:
        raise ControllerOptionError("extractor", str(exc)) from None


def samples_named(spec: str) -> int | None:
    """The number of samples a policy spec asks for outright (`fixed:k`), else None: such a
    k is a request for that many samples and meets the same caps as `t2.max_samples`."""
    policy = make_policy(spec)
    if isinstance(policy, Fixed) and policy.spec != FIXED_ALL_SPEC:
        return policy.k
    return None


class PolicyBook:
    """Long-lived `Policy` objects per (tenant, model, spec), at most `capacity` of them (LRU):
    what t2 learns is specific to one tenant's traffic on one model."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the policy book needs a capacity >= 1")
        self.capacity = capacity
        self._policies: OrderedDict[tuple[str, str, str], Policy] = OrderedDict()

    def get(self, tenant: str, model: str, spec: str) -> Policy:
        key = (tenant, model, spec.strip())
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = make_policy(spec)
            while len(self._policies) > self.capacity:
                self._policies.popitem(last=False)
        else:
            self._policies.move_to_end(key)
        return policy

    def __len__(self) -> int:
        return len(self._policies)
