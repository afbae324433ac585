"""What the routes share: config, key ring, orchestrator, engine facade and billing provider.

`AppState.job` turns a validated request plus the tenant's config into a `SamplingJob`, applying
the precedence request `t2` → tenant → defaults, and refusing a request that raises a cap the
tenant's config does not let it raise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from server.api.errors import APIError, bad_request
from server.api.schemas import _SamplingRequest
from server.auth import KeyRing
from server.billing_protocol import BillingProvider, UnmeteredProvider
from server.config import AppConfig, TenantConfig
from server.orchestrator import (
    ControllerOptionError,
    EngineAPI,
    Orchestrator,
    SamplingJob,
    check_controller_names,
)
from server.verifiers import VerifierBook


@dataclass
class AppState:
    config: AppConfig
    engine_api: EngineAPI
    billing: BillingProvider = field(default_factory=UnmeteredProvider)
    started_at: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.keyring = KeyRing(self.config)
        self.orchestrator = Orchestrator(self.engine_api)
        self.verifiers = VerifierBook()

    def reload(self, config: AppConfig) -> None:
        """Swap in a new config; requests already running keep the objects they resolved."""
        self.config = config
        self.keyring = KeyRing(config)

    def job(
        self, tenant: TenantConfig, body: _SamplingRequest, prompt: str, request_id: str
    ) -> SamplingJob:
        defaults = self.config.defaults
        opts = body.t2
        policy = (opts and opts.policy) or tenant.policy or defaults.policy
        aggregator = (opts and opts.aggregator) or tenant.aggregator or defaults.aggregator
        extractor = (opts and opts.extractor) or tenant.extractor or defaults.extractor
        try:
            check_controller_names(policy, aggregator, extractor)
        except ControllerOptionError as exc:
            raise bad_request(str(exc), param=f"t2.{exc.field}", code="invalid_t2_option") from None

        cap_samples = tenant.max_samples or defaults.max_samples
        cap_cost = tenant.max_cost if tenant.max_cost is not None else defaults.max_cost
        cap_deadline = (
            tenant.deadline_ms if tenant.deadline_ms is not None else defaults.deadline_ms
        )
        max_samples = _capped(
            opts.max_samples if opts else None, cap_samples, "max_samples", tenant
        )
        max_cost = _capped(opts.max_cost if opts else None, cap_cost, "max_cost", tenant)
        deadline_ms = _capped(
            opts.deadline_ms if opts else None, cap_deadline, "deadline_ms", tenant
        )

        prompt_tokens = self.engine_api.count_tokens(prompt)
        context = self.engine_api.max_model_len()
        if prompt_tokens >= context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens, but the prompt has "
                f"{prompt_tokens} tokens.",
                param="messages" if hasattr(body, "messages") else "prompt",
                code="context_length_exceeded",
            )
        requested = body.requested_max_tokens()
        if requested is not None and prompt_tokens + requested > context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens; "
                f"the prompt ({prompt_tokens}) "
                f"plus max_tokens ({requested}) exceed it.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = requested or min(defaults.max_tokens, context - prompt_tokens)
        return SamplingJob(
            request_id=request_id,
            model=body.model,
            prompt=prompt,
            prompt_tokens=prompt_tokens,
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
            timeout_s=self.config.server.request_timeout_s,
        )


def _capped(
    asked: float | None, cap: float | None, name: str, tenant: TenantConfig
) -> float | None:
    """The request's value if it stays within the tenant's cap (or raising is allowed), else 403."""
    if asked is None:
        return cap
    if cap is not None and asked > cap and not tenant.allow_raising_caps:
        raise APIError(
            403,
            f"t2.{name}={asked:g} exceeds this tenant's cap of {cap:g}; "
            "this tenant's requests may not raise it.",
            param=f"t2.{name}",
            code="cap_exceeded",
        )
    return asked


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.t2
    return state
