"""Policies by name: validation of a request's controller names, and the bounded policy book.

A t2 policy learns a prior from the traffic it serves, so it must outlive one request; but the
spec string comes from the client (`t2.policy`), so the book that keeps policies must not grow
with the number of distinct specs. It keeps at most `capacity` of them, least recently used
out first; each holds only a bounded count table (controller.policy.t2).

A model with calibrated curves (its config entry's `curves:`, controller.scaling.served) gives
every new t2 policy on it the model's leader prior and Acc(k) instead of the uniform prior.
What t2 learns per (tenant, model) goes to a `LearnedStore` beside the ledger, so a restart
keeps it and replicas sharing the store pool their traffic: each finished question adds its
(n, c) cell there, and on t2's refit schedule the policy reloads the merged table. The
`online` rule does the same with its vote-histogram table, through the same protocol, under
the model key `<model>#online` (controller.policy.online.encode_histogram).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from controller.aggregate import get_extractor
from controller.aggregate.vote import check_method
from controller.policy.base import Policy
from controller.policy.factory import check_spec, make_policy
from controller.policy.learned import LearnedStore, Pair
from controller.policy.online import (
    STORE_SUFFIX,
    Online,
    decode_histogram,
    encode_histogram,
    histogram,
)
from controller.policy.prior import leader_pair
from controller.policy.rules import Fixed
from controller.policy.t2 import T2
from controller.scaling.served import ServedCurves
from server.config import AppConfig
from server.errors import ConfigError, ControllerOptionError

log = logging.getLogger("t2serve.policies")
Learner = T2 | Online
"""Policies whose learned table persists in the store."""
T = TypeVar("T")

STORE_WAIT_S = 2.0
"""Longest a request waits on the learned-state store. That state is best-effort (a lost cell
costs a little learning); an answer already computed must not wait out the store's own
timeouts (Redis's 5 s, SQLite's 10 s busy wait) behind it."""
STORE_BACKOFF_S = 5.0
"""After the store fails or stalls, requests skip it this long rather than each wait again."""

DEFAULT_CAPACITY = 256
FIXED_ALL_SPEC = "fixed:all"  # every sample the caps allow: no number of its own


def check_controller_names(policy: str, aggregator: str, extractor: str) -> None:
    """Raise `ControllerOptionError` (400) naming the `t2` field that is unknown or malformed."""
    for field, check, value in (("policy", check_spec, policy),
                                 ("aggregator", check_method, aggregator),
                                 ("extractor", get_extractor, extractor)):  # fmt: skip
        try:
            check(value)
        except ValueError as exc:
            raise ControllerOptionError(field, str(exc)) from None


def samples_named(spec: str) -> int | None:
    """The number of samples a policy spec asks for outright (`fixed:k`), else None: such a
    k is a request for that many samples and meets the same caps as `t2.max_samples`."""
    policy = make_policy(spec)
    if isinstance(policy, Fixed) and policy.spec != FIXED_ALL_SPEC:
        return policy.k
    return None


@dataclass(frozen=True)
class VersionedCurves:
    """A model's curves and the (path, mtime) they were read from: a reload that finds the
    same version keeps the policies built on them."""

    curves: ServedCurves
    version: tuple[str, float]


class PolicyBook:
    """Long-lived `Policy` objects per (tenant, model, spec), at most `capacity` of them (LRU):
    what t2 learns is specific to one tenant's traffic on one model.

    curves: served models' calibrated curves by model id (t2's starting prior and Acc(k)).
    store: where t2's learned tables persist (None: in memory only); `open_store` instead
        opens it on first use (a server that never runs t2 never creates it).
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        curves: Mapping[str, ServedCurves] | None = None,
        store: LearnedStore | None = None,
        open_store: Callable[[], LearnedStore] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1:
            raise ValueError("the policy book needs a capacity >= 1")
        self.capacity = capacity
        self.curves = dict(curves or {})
        self.versioned: dict[str, VersionedCurves] = {}  # what swap_curves last served
        self._store = store
        self._open_store = open_store
        self._opened = False
        self._skip_until = 0.0  # monotonic: the store failed or stalled; leave it till then
        self.clock = clock
        self._policies: OrderedDict[tuple[str, str, str], Policy] = OrderedDict()

    @property
    def store(self) -> LearnedStore | None:
        if self._store is None and self._open_store is not None:
            self._store, self._open_store = self._open_store(), None
            self._opened = True
        return self._store

    def swap_curves(self, curves: Mapping[str, VersionedCurves]) -> None:
        """Serve these curves from now on (a config reload). The cached policies of a model
        whose curves changed go: the next request builds its policy from the new curves and
        restores what the model's traffic taught from the store."""
        old = {m: v.version for m, v in self.versioned.items()}
        new = {m: v.version for m, v in curves.items()}
        stale = {m for m in {*old, *new} if old.get(m) != new.get(m)}
        self.curves = {m: v.curves for m, v in curves.items()}
        self.versioned = dict(curves)
        for key in [k for k in self._policies if k[1] in stale]:
            del self._policies[key]

    def make(self, model: str, spec: str) -> Policy:
        """A fresh policy for `spec`; a t2 on a calibrated model starts from its curves."""
        policy = make_policy(spec)
        served = self.curves.get(model)
        if isinstance(policy, T2) and served is not None:
            policy = make_policy(
                spec,
                prior=served.leader_prior,
                curve=served.accuracy,
                accuracy_given_votes=served.accuracy_given_votes,
            )
        return policy

    async def get(self, tenant: str, model: str, spec: str) -> Policy:
        key = (tenant, model, spec.strip())
        policy = self._policies.get(key)
        if policy is not None:
            self._policies.move_to_end(key)
            return policy
        policy = self.make(model, spec)
        if isinstance(policy, Learner):
            await self._restore(tenant, model, policy)
        policy = self._policies.setdefault(key, policy)  # a concurrent first request won
        self._policies.move_to_end(key)
        while len(self._policies) > self.capacity:
            self._policies.popitem(last=False)
        return policy

    async def observe(
        self, tenant: str, model: str, policy: Policy, answers: Sequence[str | None]
    ) -> None:
        """Let the policy learn from a finished question, and persist what it learned (best
        effort: a store that fails or stalls costs the cell, never the answer)."""
        policy.observe(answers)
        cell = learned_cell(policy, model, answers)
        if cell is None or not isinstance(policy, Learner):
            return  # nothing to persist: the store is not even opened
        key, pair = cell

        async def add(store: LearnedStore) -> bool:
            await store.add(tenant, key, pair, self.clock())
            return True

        saved = await self._with_store(add, f"{tenant}/{key} not saved")
        if not saved or not policy.refit_due():
            return
        await self._restore(tenant, model, policy, refit=True)
        if isinstance(policy, T2):
            prior = policy.prior
            await self._with_store(
                lambda store: store.set_prior(tenant, model, prior, self.clock()),
                f"{tenant}/{model} prior not saved",
            )

    async def _with_store(
        self, act: Callable[[LearnedStore], Awaitable[T]], failure: str
    ) -> T | None:
        """`act` on the learned store within STORE_WAIT_S, or None: no store, or it failed or
        stalled (logged; then skipped for STORE_BACKOFF_S)."""
        if time.monotonic() < self._skip_until:
            return None
        try:
            store = self.store  # opened on first use: that may fail too
            if store is None:
                return None
            return await asyncio.wait_for(act(store), STORE_WAIT_S)
        except Exception:  # TimeoutError included
            log.warning("learned state %s; skipping the store for %g s", failure,
                        STORE_BACKOFF_S, exc_info=True)  # fmt: skip
            self._skip_until = time.monotonic() + STORE_BACKOFF_S
            return None

    async def _restore(
        self, tenant: str, model: str, policy: Learner, *, refit: bool = False
    ) -> None:
        """Load the shared learned state into `policy`. A t2 takes the stream's stored prior
        as it is (fitting one costs ~10 ms on the event loop, once per new spec) unless
        `refit`: on its refit schedule it fits the merged table and stores the result."""
        key = model + STORE_SUFFIX if isinstance(policy, Online) else model
        learned = await self._with_store(
            lambda store: store.load(tenant, key, self.clock()), f"{tenant}/{key} not read"
        )
        if learned is None or not learned.counts:
            return
        if isinstance(policy, Online):
            policy.load({decode_histogram(c): v for c, v in learned.counts.items()})
        else:
            policy.load(learned.counts, prior=None if refit else learned.prior)

    async def aclose(self) -> None:
        """Close the store if this book opened it (a given store is the caller's)."""
        if self._store is not None and self._opened:
            await self._store.close()

    def __len__(self) -> int:
        return len(self._policies)


def learned_cell(
    policy: Policy, model: str, answers: Sequence[str | None]
) -> tuple[str, Pair] | None:
    """(store model key, cell) a finished question adds to the policy's learned table; None
    for a policy that learns nothing or a question no sample answered."""
    if isinstance(policy, T2):
        pair = leader_pair(answers)
        return None if pair is None else (model, pair)
    if isinstance(policy, Online):
        h = histogram(answers)
        return None if h[0] == 0 else (model + STORE_SUFFIX, encode_histogram(h))
    return None


def served_curves(
    config: AppConfig, known: Mapping[str, VersionedCurves] | None = None
) -> dict[str, VersionedCurves]:
    """Each model's curves from its `curves:` entry, else from curves.json beside its weights
    (the file its routes read too), with the file version they were read at (`known` ones of
    the same version are kept, not read again). ConfigError names `models.N.curves` of a named
    file that cannot be read; a file beside the weights without this model's serving entry
    (a `t2serve fit` output, another model's calibration) is logged and left out, and the
    model starts uncalibrated."""
    from controller.scaling.served import ServedCurvesError, load_served

    curves: dict[str, VersionedCurves] = {}
    for i, m in enumerate(config.models):
        path = m.curves_file()
        try:
            version = (str(path), path.stat().st_mtime)
        except OSError as exc:
            if m.curves is None:
                continue  # no curves beside its weights: uncalibrated
            raise ConfigError(f"models.{i}.curves: {exc}") from None
        held = (known or {}).get(m.id)
        if held is not None and held.version == version:
            curves[m.id] = held
            continue
        try:
            curves[m.id] = VersionedCurves(load_served(path, m.id), version)
        except (OSError, ServedCurvesError) as exc:
            if m.curves is not None:
                raise ConfigError(f"models.{i}.curves: {exc}") from None
            _unused_curves(i, *version, str(exc))
    return curves


@lru_cache(maxsize=64)
def _unused_curves(index: int, path: str, mtime: float, reason: str) -> None:
    """Log a curves file beside a model's weights that is not used, once per file version:
    `served_curves` runs again on every reload and admin change."""
    log.warning("models.%d: %s beside its weights is not used (%s); t2 starts uncalibrated",
                index, path, reason)  # fmt: skip


def policy_book(config: AppConfig) -> PolicyBook:
    """The server's book: each model's curves, and t2's learned state beside the ledger."""
    from storage import open_stores

    book = PolicyBook(open_store=open_stores(config.ledger).learned)
    book.swap_curves(served_curves(config))
    return book
