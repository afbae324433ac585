"""`resolve_job`: a validated request plus the tenant's config → the `SamplingJob` to run.

Everything a job needs is settled here, once, before any wave: the controller names (request
`t2` → tenant → defaults), the caps (a request may lower a tenant's cap, and raise it only where
the tenant allows; a policy that names its k, `fixed:k`, asks for k samples under the same
rule as `t2.max_samples`), the prompt's tokens and the context check. The wave loop then never
tokenizes or checks again. `temperature: 0` is greedy decoding, where every sample would be the
same: such a job draws one.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from server.api.protocol import MAX_SAMPLES, SamplingRequest, T2Options
from server.config import AppConfig, RouteConfig, TenantConfig
from server.engine.service import EngineService
from server.errors import APIError, bad_request
from server.sampling import RoutedJob, SamplingJob, check_controller_names, samples_named

if TYPE_CHECKING:
    from server.serving.state import ServingState


def resolve_job(
    config: AppConfig,
    engine: EngineService,
    tenant: TenantConfig,
    body: SamplingRequest,
    prompt: str,
    request_id: str,
    prompt_param: str,
) -> SamplingJob:
    """The job for one prompt of `body`; `prompt_param` names the field it came from."""
    defaults = config.defaults
    opts = body.t2
    policy = (opts and opts.policy) or tenant.policy or defaults.policy
    aggregator = (opts and opts.aggregator) or tenant.aggregator or defaults.aggregator
    extractor = (opts and opts.extractor) or tenant.extractor or defaults.extractor
    check_controller_names(policy, aggregator, extractor)
    verifier = opts.verifier if opts else None
    if verifier is not None and tenant.verifier_named(verifier) is None:
        names = ", ".join(v.label for v in tenant.verifier_list()) or "none"
        raise bad_request(
            f"t2.verifier: this tenant has no verifier named {verifier!r} (it has: {names}).",
            param="t2.verifier",
            code="invalid_t2_option",
        )

    cap_samples = tenant.max_samples or defaults.max_samples
    cap_cost = tenant.max_cost if tenant.max_cost is not None else defaults.max_cost
    cap_deadline = tenant.deadline_ms if tenant.deadline_ms is not None else defaults.deadline_ms
    asked_samples, asked_as = (opts.max_samples, "max_samples") if opts else (None, "")
    named = samples_named(policy) if opts and opts.policy else None
    if named is not None and asked_samples is None:  # `fixed:k` asks for k samples outright
        if named > MAX_SAMPLES:
            raise bad_request(
                f"t2.policy asks for {named} samples; at most {MAX_SAMPLES} per answer.",
                param="t2.policy",
                code="invalid_t2_option",
            )
        asked_samples, asked_as = named, "policy"
    max_samples = _capped(asked_samples, cap_samples, asked_as, tenant)
    if body.temperature == 0:  # greedy decoding: every sample is the same one
        max_samples = 1
    max_cost = _capped(opts.max_cost if opts else None, cap_cost, "max_cost", tenant)
    deadline_ms = _capped(opts.deadline_ms if opts else None, cap_deadline, "deadline_ms", tenant)

    if body.seed is not None and not engine.honours_seed():
        raise APIError(
            400,
            "This model's engine cannot honour a per-request seed (a CPU engine with chunked "
            "prefill on); send the request without 'seed'.",
            param="seed",
            code="unsupported_parameter",
        )
    context = engine.max_model_len()
    if len(prompt) > engine.max_prompt_chars():  # refused without spending seconds tokenizing
        raise bad_request(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{len(prompt)} characters, more than {context} tokens can hold.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    tokens = engine.tokenize(prompt)
    if tokens.tokens >= context:
        raise bad_request(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{tokens.tokens} tokens.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    requested = body.requested_max_tokens()
    if requested is not None and tokens.tokens + requested > context:
        raise bad_request(
            f"This model's maximum context length is {context} tokens; the prompt "
            f"({tokens.tokens}) plus max_tokens ({requested}) exceed it.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    max_tokens = requested or min(defaults.max_tokens, context - tokens.tokens)
    return SamplingJob(
        request_id=request_id,
        tenant=tenant.id,
        model=body.model,
        prompt=tokens,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_list(),
        seed=body.seed,
        policy=policy,
        aggregator=aggregator,
        extractor=extractor,
        max_samples=int(max_samples) if max_samples is not None else cap_samples,
        max_cost=max_cost,
        deadline_ms=int(deadline_ms) if deadline_ms is not None else None,
        timeout_s=config.server.request_timeout_s,
        verifier=verifier,
    )


def routed_job(
    state: ServingState,
    route: RouteConfig,
    tenant: TenantConfig,
    body: SamplingRequest,
    prompt: str,
    request_id: str,
    prompt_param: str,
) -> RoutedJob:
    """The jobs of one prompt of a routed request, one per candidate (each model tokenizes
    and checks the context itself). A route runs the T² router, so its policy is t2 (the
    request's, the route's, the tenant's or the default t2 spec; its λ prices a sample of the
    first candidate) and its answer a majority vote: other names are a 400 naming the field."""
    opts = body.t2
    if opts is not None and opts.policy is not None and not _is_t2(opts.policy):
        raise bad_request(
            f"The model '{route.id}' is a route, which runs the t2 router; t2.policy must be "
            f"'t2' or 't2:...', not {opts.policy!r}.",
            param="t2.policy",
            code="invalid_t2_option",
        )
    aggregator = (opts and opts.aggregator) or tenant.aggregator or state.config.defaults.aggregator
    if aggregator != "majority":
        raise bad_request(
            f"The model '{route.id}' is a route, whose answer is a majority vote (controller."
            f"routing.cascade_answer); t2.aggregator {aggregator!r} is not supported there.",
            param="t2.aggregator",
            code="invalid_t2_option",
        )
    fallback = tenant.policy or state.config.defaults.policy
    spec = (opts and opts.policy) or route.policy or (fallback if _is_t2(fallback) else "t2")
    narrowed = body.model_copy(
        update={"t2": (opts or _no_options()).model_copy(update={"policy": spec})}
    )
    jobs = {}
    for name in route.route:
        job = resolve_job(
            state.config, state.engine(name), tenant, narrowed, prompt, request_id, prompt_param
        )
        jobs[name] = dataclasses.replace(job, model=name)
    return RoutedJob(route.id, jobs, cheapest_first=route.start == "cheapest")


def _is_t2(spec: str) -> bool:
    return spec.strip().lower().partition(":")[0] == "t2"


def _no_options() -> T2Options:
    return T2Options()


def _capped(
    asked: float | None, cap: float | None, name: str, tenant: TenantConfig
) -> float | None:
    """The request's value if it stays within the tenant's cap (or raising is allowed), else 403."""
    if asked is None:
        return cap
    if cap is not None and asked > cap and not tenant.allow_raising_caps:
        what = f"t2.{name}={asked:g}" if name != "policy" else f"t2.policy asks for {asked:g} and"
        raise APIError(
            403,
            f"{what} exceeds this tenant's cap of {cap:g}; "
            "this tenant's requests may not raise it.",
            param=f"t2.{name}",
            code="cap_exceeded",
        )
    return asked
