"""What a route's decisions are told a wave costs, priced as the ledger will bill it.

A wave is one engine call: its prompt once (`call`), then each sample's completion (`sample`,
its worst case: max_tokens). A later call on a model already called finds its prompt in the
prefix cache, and the ledger bills only the prompt tokens the engine computed, so a repeat
call's prompt is priced at the cache hit's computed tokens (`recall`: none). Each model draws
at most its own job's `max_samples` (`caps`). Every figure comes from the tenant's billing
quote (its price entry per model), as the replay's `controller.replay.route.Prices` gives its
recorded dollars, so the server and the replay weigh the same waves alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.routing import N_MAX, Route
from server.billing.protocol import Billing
from server.sampling.job import RoutedJob

FREE = 1e-12
"""A sample's price floor: a model priced at 0 (a self-hosted one billed nothing) costs this."""
CACHED_PROMPT_TOKENS_COMPUTED = 0
"""Prompt tokens a repeat call on the same model computes: its prompt is a prefix-cache hit."""
METERED = ("currency", "flops")


@dataclass(frozen=True)
class RoutePrices:
    """Per candidate: a sample's worst-case completion, a first call's prompt, a repeat call's
    prompt, and the samples it may draw; `unit` is what they are counted in."""

    sample: dict[str, float]
    call: dict[str, float]
    recall: dict[str, float]
    caps: dict[str, int]
    unit: str

    def per_sample(self, model: str) -> float:
        """One sample drawn alone (its call's prompt included): what a policy's λ prices."""
        return self.call[model] + self.sample[model]

    def yardstick(self) -> float:
        """What a request's λ per sample is a price of: one sample of the first candidate (the
        cheapest) that costs anything. A free first candidate cannot be it: λ per unit of
        nothing is infinite, and the route would never leave that model. All free: the first's
        (every cost is then 0, so λ weighs nothing)."""
        prices = [self.per_sample(m) for m in self.sample]
        return next((p for p in prices if p > 2 * FREE), prices[0])


def route_prices(
    routed: RoutedJob, route: Route, billing: Billing, spendable: float | None = None
) -> RoutePrices:
    """Each candidate's prices in the tenant's unit (currency or FLOPs); for unmetered tenants,
    whose unit is tokens, in FLOPs (2·N per token): a token of the larger model is not as cheap
    as one of the smaller. Caps are each job's `max_samples`, at most the N_MAX samples whose
    vote states routing tabulates (as the replay's). A candidate whose one sample (its call's
    prompt and a worst-case completion, as billed) costs more than `spendable` (what the
    request may spend: its hard budget left, its `max_cost`) is capped at 0, so the route
    answers on a member that fits rather than be refused on one that does not; when none
    fits, the caps stay and the ledger's refusal (or `max_cost`'s one tried sample) stands."""
    metered = billing.unit in METERED

    def price(model: str, params: float, prompt: int, completion: int) -> float:
        if metered:
            return billing.quote(prompt, completion, model=model)
        return 2.0 * params * (prompt + completion)

    sample: dict[str, float] = {}
    call: dict[str, float] = {}
    recall: dict[str, float] = {}
    caps: dict[str, int] = {}
    for cand in route.candidates:
        job = routed.jobs[cand.model]
        sample[cand.model] = max(price(cand.model, cand.params, 0, job.max_tokens), FREE)
        call[cand.model] = price(cand.model, cand.params, job.prompt_tokens, 0)
        recall[cand.model] = price(cand.model, cand.params, CACHED_PROMPT_TOKENS_COMPUTED, 0)
        caps[cand.model] = min(job.max_samples, N_MAX)
    if spendable is not None:
        fits = {m: caps[m] for m in caps if _one_sample(routed, m, billing) <= spendable}
        if fits:
            caps = {m: fits.get(m, 0) for m in caps}
    return RoutePrices(sample, call, recall, caps, billing.unit if metered else "flops")


def _one_sample(routed: RoutedJob, model: str, billing: Billing) -> float:
    """One sample drawn alone on `model`, worst case, in the billing's own unit."""
    job = routed.jobs[model]
    return billing.quote(job.prompt_tokens, job.max_tokens, model=model)
