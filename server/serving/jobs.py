"""`resolve_job`: a validated request plus the tenant's config → the `SamplingJob` to run.

Everything a job needs is settled here, once, before any wave: the controller names (request
`t2` → tenant → defaults), the caps (a request may lower a tenant's cap, and raise it only where
the tenant allows; a policy that names its k, `fixed:k`, asks for k samples under the same
rule as `t2.max_samples`), the prompt's tokens and the context check. The wave loop then never
tokenizes or checks again. `temperature: 0` is greedy decoding, where every sample would be the
same: such a job draws one.

The request's pass-through sampling fields (top_k, min_p, penalties, min_tokens, logit_bias,
stop_token_ids, ignore_eos, logprobs, response_format) become one `GenerationOptions` that
every sample of every wave gets; what needs the model (token ids below its vocabulary size,
min_tokens within max_tokens, an engine that enforces structured outputs) is checked here, so a
bad value is a 400 naming its field before any wave.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jsonschema

from controller.policy.factory import ignored_on_a_route, is_t2
from server.api.protocol import (
    MAX_SAMPLES,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    T2Options,
)
from server.config import AppConfig, RouteConfig, TenantConfig
from server.engine.base import GenerationOptions, Prompt, StructuredOutput, is_greedy
from server.engine.service import EngineService
from server.errors import APIError, bad_request
from server.sampling import RoutedJob, SamplingJob, check_controller_names, samples_named

if TYPE_CHECKING:
    from server.serving.state import ServingState


@dataclass(frozen=True)
class _Controller:
    """A request's controller names (request `t2` → tenant → defaults) and its output options."""

    policy: str
    aggregator: str
    extractor: str
    verifier: str | None
    options: GenerationOptions
    json_field: str | None


@dataclass(frozen=True)
class _Caps:
    max_samples: int
    max_cost: float | None
    deadline_ms: int | None


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
    names = _controller(config, engine, tenant, body)
    caps = _caps(config, tenant, body, names.policy)
    _check_seed(engine, body)
    tokens, max_tokens = _fit_context(config, engine, body, prompt, prompt_param)
    if names.options.min_tokens > max_tokens:
        raise bad_request(
            f"min_tokens ({names.options.min_tokens}) exceeds max_tokens ({max_tokens}"
            f"{'' if body.requested_max_tokens() else ', the default where none is given'}).",
            param="min_tokens",
        )
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
        policy=names.policy,
        aggregator=names.aggregator,
        extractor=names.extractor,
        max_samples=caps.max_samples,
        max_cost=caps.max_cost,
        deadline_ms=caps.deadline_ms,
        timeout_s=config.server.request_timeout_s,
        verifier=names.verifier,
        options=names.options,
        json_field=names.json_field,
    )


def _controller(
    config: AppConfig, engine: EngineService, tenant: TenantConfig, body: SamplingRequest
) -> _Controller:
    """The controller names, checked (400 naming the `t2` field), and the output options."""
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
    options = generation_options(engine, body)
    if aggregator == "logprob":  # the only vote that weighs samples by their logprob
        options = dataclasses.replace(options, sample_logprob=True)
    json_field = (opts and opts.json_field) or tenant.json_field
    if options.structured is not None and json_field and not (opts and opts.extractor):
        extractor = "json_field"  # JSON output and a named field: the vote runs over that field
    elif opts and opts.json_field:  # named by the request, it would be dropped: say why
        why = "t2.extractor is named too" if opts.extractor else "there is no JSON response_format"
        raise bad_request(
            f"t2.json_field votes over a field of JSON answers, but {why}; send a response_format "
            "of type json_object or json_schema, and no t2.extractor.",
            param="t2.json_field",
            code="invalid_t2_option",
        )
    else:
        json_field = None  # a tenant's default field applies to JSON requests only
    return _Controller(policy, aggregator, extractor, verifier, options, json_field)


def _caps(config: AppConfig, tenant: TenantConfig, body: SamplingRequest, policy: str) -> _Caps:
    """The request's caps: it may lower the tenant's, and raise them only where allowed."""
    defaults = config.defaults
    opts = body.t2
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
    if is_greedy(body.temperature):  # greedy decoding: every sample is the same one
        max_samples = 1
    max_cost = _capped(opts.max_cost if opts else None, cap_cost, "max_cost", tenant)
    deadline_ms = _capped(opts.deadline_ms if opts else None, cap_deadline, "deadline_ms", tenant)
    return _Caps(
        int(max_samples) if max_samples is not None else cap_samples,
        max_cost,
        int(deadline_ms) if deadline_ms is not None else None,
    )


def _check_seed(engine: EngineService, body: SamplingRequest) -> None:
    if body.seed is not None and not engine.honours_seed():
        raise APIError(
            400,
            "This model's engine cannot honour a per-request seed (a CPU engine with chunked "
            "prefill on); send the request without 'seed'.",
            param="seed",
            code="unsupported_parameter",
        )


def _fit_context(
    config: AppConfig,
    engine: EngineService,
    body: SamplingRequest,
    prompt: str,
    prompt_param: str,
) -> tuple[Prompt, int]:
    """The prompt tokenized once, and max_tokens; 400 when they exceed the model's context."""
    context = engine.max_model_len()
    if len(prompt) > engine.max_prompt_chars():  # refused without spending seconds tokenizing
        raise bad_request(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{len(prompt)} characters, more than {context} tokens can hold.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    tokens = engine.tokenize(prompt, chat=prompt_param == "messages")
    if tokens.tokens >= context:
        raise bad_request(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{tokens.tokens} tokens.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    requested = body.requested_max_tokens()
    if requested is not None and tokens.tokens + requested > context:
        named = "max_tokens" if requested == body.max_tokens else "max_completion_tokens"
        raise bad_request(
            f"This model's maximum context length is {context} tokens; the prompt "
            f"({tokens.tokens}) plus {named} ({requested}) exceed it.",
            param=named,
            code="context_length_exceeded",
        )
    return tokens, requested or min(config.defaults.max_tokens, context - tokens.tokens)


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
    first candidate): another policy, or a request's t2 option other than λ (the router picks
    its own waves), is a 400 naming the field. A tenant's or the default spec, written for
    single-model requests too, lends the route its λ only. Every aggregator works on a
    route as on one model (over the answering model's samples)."""
    opts = body.t2
    named = opts.policy if opts is not None else None
    if named is not None and not is_t2(named):
        raise bad_request(
            f"The model '{route.id}' is a route, which runs the t2 router; t2.policy must be "
            f"'t2' or 't2:...', not {named!r}.",
            param="t2.policy",
            code="invalid_t2_option",
        )
    ignored = ignored_on_a_route(named) if named is not None else []
    if ignored:
        raise bad_request(
            f"The model '{route.id}' is a route: its router takes only λ from t2.policy "
            f"(e.g. 't2:lam=0.01'), so {', '.join(ignored)} would be ignored. Name one model to "
            f"use {'it' if len(ignored) == 1 else 'them'}.",
            param="t2.policy",
            code="invalid_t2_option",
        )
    fallback = tenant.policy or state.config.defaults.policy
    spec = (opts and opts.policy) or route.policy or (fallback if is_t2(fallback) else "t2")
    narrowed = body.model_copy(
        update={"t2": (opts or _no_options()).model_copy(update={"policy": spec})}
    )
    jobs = {}
    for name in route.route:
        try:
            job = resolve_job(
                state.config,
                state.engine(name),
                tenant,
                narrowed,
                prompt,
                request_id,
                prompt_param,
            )
        except APIError as exc:  # "This model's context…": say which member it is
            exc.message = f"{exc.message} (route '{route.id}', its member '{name}')"
            exc.args = (exc.message,)
            raise
        jobs[name] = dataclasses.replace(job, model=name)
    return RoutedJob(route.id, jobs, cheapest_first=route.start == "cheapest")


def _no_options() -> T2Options:
    return T2Options()


def generation_options(engine: EngineService, body: SamplingRequest) -> GenerationOptions:
    """The request's pass-through sampling fields, checked against the model."""
    vocab = engine.vocab_size()
    bias: list[tuple[int, float]] = []
    for key, value in (body.logit_bias or {}).items():
        if int(key) >= vocab:
            raise bad_request(
                f"logit_bias names token {key}; this model's token ids are below {vocab}.",
                param="logit_bias",
            )
        bias.append((int(key), float(value)))
    stop_ids = tuple(body.stop_token_ids or ())
    if any(t >= vocab for t in stop_ids):
        raise bad_request(
            f"stop_token_ids: this model's token ids are below {vocab}.", param="stop_token_ids"
        )
    top = body.top_logprobs_asked()
    if isinstance(body, CompletionRequest) and body.echo and top is not None:
        raise APIError(
            400,
            "echo with logprobs (prompt logprobs) is not supported; send one of them.",
            param="echo",
            code="unsupported_parameter",
        )
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs is not None and top is None:
        raise bad_request("top_logprobs needs logprobs: true.", param="top_logprobs")
    return GenerationOptions(
        top_k=body.top_k if body.top_k is not None else 0,
        min_p=body.min_p if body.min_p is not None else 0.0,
        repetition_penalty=body.repetition_penalty if body.repetition_penalty is not None else 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        min_tokens=body.min_tokens or 0,
        logit_bias=tuple(bias),
        stop_token_ids=stop_ids,
        ignore_eos=bool(body.ignore_eos),
        top_logprobs=top,
        structured=_structured(engine, body),
    )


def _structured(engine: EngineService, body: SamplingRequest) -> StructuredOutput | None:
    """`response_format` as constrained decoding; 400 where the engine cannot enforce it."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if not engine.honours_structured_outputs():
        raise APIError(
            400,
            "This model's engine cannot enforce structured outputs; send no response_format.",
            param="response_format",
            code="unsupported_parameter",
        )
    if fmt.type == "json_object":
        return StructuredOutput(json_object=True)
    if fmt.json_schema is None:
        raise bad_request(
            "response_format of type json_schema needs a json_schema object.",
            param="response_format.json_schema",
        )
    schema = fmt.json_schema.json_schema or {"type": "object"}
    param = "response_format.json_schema.schema"
    try:
        # what an engine is sent: strict JSON (no NaN) that UTF-8 can carry (no lone surrogate)
        text = json.dumps(schema, sort_keys=True, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        raise bad_request(
            f"{param} must be plain JSON: no NaN or Infinity, no lone surrogate in a string.",
            param=param,
        ) from None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise bad_request(
            f"{param} is not a valid JSON Schema: {exc.message}", param=param
        ) from None
    except RecursionError:
        raise bad_request(f"{param} is nested too deeply to check.", param=param) from None
    except (TypeError, AttributeError, ValueError):  # e.g. a "$schema" that is not a URI string
        raise bad_request(
            f"{param} is not a valid JSON Schema ('$schema' must be a URI string).", param=param
        ) from None
    return StructuredOutput(json_schema=text)


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
