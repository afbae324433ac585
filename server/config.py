"""The server's config file: one YAML document validated by pydantic, selected by `--config` or
`T2SERVE_CONFIG`.

A bad file is refused at start with `ConfigError`, whose message names the offending field as a
dotted path (`tenants.0.api_keys.0.sha256: ...`), because a typo in a tenant's caps must never
start a server that bills differently than its operator thinks.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller.aggregate.extract import get_extractor
from controller.aggregate.vote import check_method
from controller.budget.models import Budgets, PacingSettings, Prices, RateLimits, whole
from controller.policy.factory import check_spec, ignored_on_a_route, is_t2
from server.errors import ConfigError as ConfigError  # raised by the loaders below
from storage import PENDING_SETTLES_FILE


def _extractor(name: str) -> str:
    get_extractor(name)  # its ValueError names what is wrong
    return name


def _route_policy(spec: str) -> str:
    """A route's t2 spec: its router takes λ only, so any other option would be ignored."""
    if not is_t2(spec):
        raise ValueError(f"a route runs the t2 router: its policy must be 't2' or 't2:...', "
                         f"not {spec!r}")  # fmt: skip
    ignored = ignored_on_a_route(check_spec(spec))
    if ignored:
        raise ValueError(f"a route's router takes only λ from its t2 spec; {', '.join(ignored)} "
                         "would be ignored")  # fmt: skip
    return spec


# Checked at load, naming the field: a typo must not turn every request into a 400 the client
# did not cause (the same checks as a request's t2 fields, server.sampling.policies).
PolicySpec = Annotated[str, AfterValidator(check_spec)]
AggregatorName = Annotated[str, AfterValidator(check_method)]
ExtractorName = Annotated[str, AfterValidator(_extractor)]

CONFIG_ENV = "T2SERVE_CONFIG"
ADMIN_KEY_ENV = "T2SERVE_ADMIN_KEY"
"""The admin key from the environment: the key itself, or `sha256:<its hex digest>`."""


class _Strict(BaseModel):
    # No NaN or Infinity, and no coercion (as controller.budget.models): `port: true` is not
    # port 1, nor `allow_raising_caps: "yes"` a yes. Integer fields take JSON's 3.0 (`Whole`).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


Whole = BeforeValidator(whole)


def hash_key(key: str) -> str:
    """The stored form of an API key: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


def env_admin_digest() -> str | None:
    """The admin key digest T2SERVE_ADMIN_KEY gives (None: unset); ValueError when it is
    'sha256:' and not 64 hex digits (such a key would never match anything)."""
    env = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if not env.startswith("sha256:"):
        return hash_key(env) if env else None
    digest = env[7:].lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{ADMIN_KEY_ENV} is 'sha256:' and not 64 hex digits")
    return digest


class ApiKey(_Strict):
    """One API key: `sha256` (hex digest) in real configs; `plain` only where `demo: true`."""

    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    plain: str | None = Field(default=None, min_length=1)
    name: str | None = None
    rate_limits: RateLimits | None = Field(
        default=None, description="this key's own rpm/tpm, on top of the tenant's"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ApiKey:
        if (self.sha256 is None) == (self.plain is None):
            raise ValueError("give exactly one of 'sha256' or 'plain'")
        return self

    def digest(self) -> str:
        return self.sha256.lower() if self.sha256 else hash_key(self.plain or "")


class ControllerDefaults(_Strict):
    """What the controller does when neither tenant nor request says otherwise."""

    policy: PolicySpec = "t2"
    aggregator: AggregatorName = "majority"
    extractor: ExtractorName = "last_number"
    max_samples: Annotated[int, Field(ge=1, le=1024), Whole] = 16
    max_cost: float | None = Field(default=None, gt=0)
    deadline_ms: Annotated[int, Field(ge=1), Whole] | None = None
    max_tokens: Annotated[int, Field(ge=1), Whole] = Field(
        default=64, description="generation length when the request names none"
    )


class VerifierConfig(_Strict):
    """One verifier for the `verifier`, `best_of_n` and `vote_score` aggregators (and for
    choosing which winning sample's text a majority vote returns).

    kind `http` (the default, for configs written before kinds): each sample is POSTed to `url`
    as {"question", "candidate"} and must answer {"score": <number>}, higher is better.
    kind `reward_model`: `model` names an entry of the top-level `verifier_models` (a
    sequence-classification model on vLLM's pooling runner); `template` renders its input.
    kind `judge`: `model` names a served model (`models`), asked with `template` at
    temperature 0; `read` says how its reply becomes a score (`text`: the number `pattern`
    captures, over `scale`; `yes_no`: P(yes) from the reply's logprobs; `answer`: whether the
    judge's own answer to `{question}` equals the candidate's, a reference-guided grade).
    kind `checker`: `checker` names a programmatic checker (controller.aggregate.CHECKERS).

    Any failure or timeout degrades the request to a majority vote, noted in `t2.note`; what
    the verifier spent is still billed. `score_map` (a score_map.json of
    controller.aggregate.score_map; `calibration`, its older name, is read too) maps scores to
    P(correct); `stop_at` stops sampling as soon as one sample's P(correct) reaches it.
    """

    kind: Literal["http", "reward_model", "judge", "checker"] = "http"
    name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="t2.verifier selects it"
    )
    url: str | None = Field(default=None, pattern=r"^https?://", description="http: endpoint")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="all samples of a request")
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. Authorization")
    concurrency: Annotated[int, Field(ge=1, le=256), Whole] = Field(
        default=8, description="samples scored at once"
    )
    model: str | None = Field(default=None, description="reward_model / judge: which model")
    template: str | None = Field(
        default=None, description="input of the model: {question} and {candidate}"
    )
    read: Literal["text", "yes_no", "answer"] = "text"
    pattern: str = Field(default=r"(-?\d+(?:\.\d+)?)", description="judge text: the score")
    scale: float = Field(default=1.0, gt=0, description="judge text: score / scale")
    max_tokens: Annotated[int, Field(ge=1, le=4096), Whole] = Field(
        default=16, description="judge: reply length"
    )
    checker: str | None = Field(default=None, description="checker: its name")
    score_map: str | None = Field(
        default=None,
        validation_alias=AliasChoices("score_map", "calibration"),
        description="score_map.json: score → P(correct)",
    )
    stop_at: float | None = Field(
        default=None, gt=0, lt=1, description="stop once a sample's P(correct) reaches this"
    )

    @field_validator("checker")
    @classmethod
    def _known_checker(cls, name: str | None) -> str | None:
        from controller.aggregate.checkers import CHECKERS

        if name is not None and name not in CHECKERS:
            raise ValueError(f"unknown checker {name!r}; choose from {', '.join(CHECKERS)}")
        return name

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    @field_validator("score_map")
    @classmethod
    def _score_map_file(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no score map file at {path!r}")
        return path

    @model_validator(mode="after")
    def _fields_of_kind(self) -> VerifierConfig:
        needs = {"http": "url", "reward_model": "model", "judge": "model", "checker": "checker"}
        field = needs[self.kind]
        if getattr(self, field) is None:
            raise ValueError(f"{field}: a verifier of kind {self.kind!r} needs '{field}'")
        return self

    @property
    def label(self) -> str:
        """Its name: as configured, else the kind (and the model or checker it uses)."""
        return self.name or (self.checker or self.model or self.kind)


def weights_problem(path: str) -> str | None:
    """Why vLLM could not load weights from `path` (None: it holds a model's config.json)."""
    if (Path(path) / "config.json").is_file():
        return None
    return f"no model at {path!r} (config.json missing)"


class VerifierModelConfig(_Strict):
    """A reward model on vLLM's pooling runner: started in-process beside the generators, or a
    remote `vllm serve --runner pooling` reached at `url` by its /pooling or /score API."""

    id: str = Field(min_length=1)
    path: str | None = Field(default=None, description="weights dir (in-process)")
    url: str | None = Field(default=None, pattern=r"^https?://", description="remote base URL")
    api: Literal["pooling", "score"] = "pooling"
    served_name: str | None = Field(default=None, description="remote: model name to send")
    params: float | None = Field(
        default=None, gt=0, description="N for FLOPs (2·N per scored token); default: weights"
    )
    kv_cache_memory_bytes: Annotated[int, Field(ge=2**20), Whole] = 64 * 2**20
    max_model_len: Annotated[int, Field(ge=16), Whole] = 512
    timeout_s: float = Field(default=30.0, gt=0, le=600)

    @field_validator("path")
    @classmethod
    def _weights_there(cls, path: str | None) -> str | None:
        if path is not None and (problem := weights_problem(path)):
            raise ValueError(problem)
        return path

    @model_validator(mode="after")
    def _where(self) -> VerifierModelConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' (in-process) or 'url' (remote)")
        return self


class AlertSettings(_Strict):
    """Budget alerts by webhook: a JSON event POSTed once per window and threshold crossed,
    signed with HMAC-SHA256 over the body (`X-T2-Signature: sha256=<hex>`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    url: str = Field(pattern=r"^https?://", description="receives the events")
    secret: str = Field(min_length=16, description="the HMAC key")
    thresholds: list[float] = Field(
        default_factory=lambda: [0.8, 1.0], min_length=1, description="fractions of a limit"
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    retries: Annotated[int, Field(ge=0, le=20), Whole] = Field(
        default=5, description="after the first attempt"
    )
    backoff_s: float = Field(default=0.5, gt=0, le=60, description="doubles per retry")

    @field_validator("thresholds")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        return alert_thresholds(values)


def alert_thresholds(values: list[float]) -> list[float]:
    """Thresholds as kept: each a fraction in (0, 10] of a limit, sorted, no repeats."""
    for v in values:
        if not 0 < v <= 10:
            raise ValueError(f"threshold {v:g} must be in (0, 10]")
    return sorted(set(values))


API_TENANTS = "api_tenants"
"""Validation-context key: the ids of tenants made through the admin API (parse_config)."""


class TenantConfig(_Strict):
    """A tenant: who it is (keys), what it may use (models) and how its requests are sampled.

    Caps (`max_samples`, `max_cost`, `deadline_ms`) bound the per-request `t2` options; with
    `allow_raising_caps: false` (the default) a request may lower but never raise them.
    Budget and price fields are added by the budgets module (issue 6).
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys: list[ApiKey] = Field(
        description="at least one in the file; none for a tenant made through the admin API, "
        "whose keys are all made there (POST /admin/tenants/{id}/keys)"
    )
    models: list[str] = Field(default_factory=lambda: ["*"], description="model ids, or '*'")
    policy: PolicySpec | None = None
    aggregator: AggregatorName | None = None
    extractor: ExtractorName | None = None
    json_field: str | None = Field(
        default=None,
        description="with a JSON-schema response_format, vote over this (dotted) field",
    )
    max_samples: Annotated[int, Field(ge=1, le=1024), Whole] | None = None
    max_cost: float | None = Field(default=None, gt=0)
    deadline_ms: Annotated[int, Field(ge=1), Whole] | None = None
    allow_raising_caps: bool = False
    prices: Prices | None = Field(default=None, description="per-model prices (controller.budget)")
    budgets: Budgets | None = Field(default=None, description="per-request and window budgets")
    user_budgets: Budgets | None = Field(
        default=None,
        description="budgets for each end user (the request's `user` field), on top of the "
        "tenant's: windows, and `request` (a ceiling on each of the user's requests)",
    )
    rate_limits: RateLimits | None = Field(
        default=None, description="requests and tokens per minute (sliding), for the tenant"
    )
    pacing: PacingSettings = Field(default_factory=lambda: PacingSettings())
    verifier: VerifierConfig | None = None
    verifiers: list[VerifierConfig] = Field(
        default_factory=list, description="more verifiers; a request picks one by t2.verifier"
    )
    alerts: AlertSettings | None = None

    def may_use(self, model: str) -> bool:
        """Whether the tenant may ask for `model` (a served model or a route) by name. A route
        it may use draws from the route's models whether or not they are listed too: an
        operator can offer `auto` without offering the dear model behind it directly."""
        return "*" in self.models or model in self.models

    def verifier_list(self) -> list[VerifierConfig]:
        """`verifier` then `verifiers`: the first is the default."""
        return ([self.verifier] if self.verifier is not None else []) + list(self.verifiers)

    def verifier_named(self, name: str | None) -> VerifierConfig | None:
        listed = self.verifier_list()
        if name is None:
            return listed[0] if listed else None
        return next((v for v in listed if v.label == name), None)

    @field_validator("api_keys")
    @classmethod
    def _keyed(cls, keys: list[ApiKey], info: ValidationInfo) -> list[ApiKey]:
        """A tenant in the file needs a key there (without one it could never be used); a
        tenant the admin API made (named in the validation context, `API_TENANTS`) has only
        stored keys."""
        made_by_api = info.data.get("id") in (info.context or {}).get(API_TENANTS, ())
        if not keys and not made_by_api:
            raise ValueError(
                "a tenant in the config file needs at least one key (sha256, or plain in a "
                "demo config)"
            )
        return keys

    @model_validator(mode="after")
    def _unique_verifier_names(self) -> TenantConfig:
        names = [v.label for v in self.verifier_list()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"verifiers: duplicate name(s) {', '.join(dupes)}; set 'name'")
        return self


def _no_model_path(engine: dict[str, Any], instead: str) -> dict[str, Any]:
    """An `engine:` block never names the weights: its `model_path` would override the
    model's `path` (EngineConfig's own field, for the engine used directly)."""
    if "model_path" in engine:
        raise ValueError(f"model_path: the weights are each model's 'path'; {instead}")
    return engine


class ModelConfig(_Strict):
    """A served model: its name, where its weights are, and its own engine settings."""

    id: str = Field(min_length=1)
    path: str = Field(min_length=1)
    owned_by: str = "t2serve"
    params: float | None = Field(
        default=None, gt=0, description="N for FLOPs (2·N per token); default: from the weights"
    )
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="this model's engine settings over the top-level `engine:` (its KV cache "
        "size, or `backend: remote` with its own `remote.urls`)",
    )

    @field_validator("engine")
    @classmethod
    def _weights_from_path(cls, engine: dict[str, Any]) -> dict[str, Any]:
        return _no_model_path(engine, "set this model's 'path'")

    def engine_settings(self, shared: dict[str, Any]) -> dict[str, Any]:
        """What this model's engine starts with: the shared settings, then its own."""
        return {"model_path": self.path, "served_name": self.id, **shared, **self.engine}

    curves: Path | None = Field(
        default=None,
        strict=False,  # a path is written as a string
        description="curves.json with this model's `serving` entry (`t2serve calibrate`): t2 "
        "starts from its leader prior and Acc(k); relative to the working directory, as `path`; "
        "default: curves.json beside the weights when it holds the model's entry",
    )

    def curves_file(self) -> Path:
        """Where its curves are: the `curves:` entry, else curves.json beside its weights (a
        file that may not exist: routes require one, a single model starts uncalibrated)."""
        return Path(self.curves) if self.curves is not None else Path(self.path) / "curves.json"

    @model_validator(mode="after")
    def _curves_load(self) -> ModelConfig:
        if self.curves is not None:
            from controller.scaling.served import ServedCurvesError, load_served

            try:
                load_served(self.curves, self.id)
            except ServedCurvesError as exc:
                raise ValueError(f"curves: {exc}") from None
        return self


class RouteConfig(_Strict):
    """A model id that routes each request to one of several served models (T² routing,
    controller.routing): `{id: auto, route: [small, large]}`, cheapest first."""

    id: str = Field(min_length=1)
    route: list[str] = Field(min_length=1, description="served model ids, cheapest first")
    owned_by: str = "t2serve"
    start: Literal["best", "cheapest"] = Field(
        default="best",
        description="best: start on the candidate and first wave with the best predicted value; "
        "cheapest: always start on the first candidate and escalate from there (a cascade)",
    )
    policy: Annotated[str, AfterValidator(_route_policy)] | None = Field(
        default=None,
        pattern=r"^t2(:.*)?$",
        description="the route's t2 spec (its λ prices a sample of the first model) when the "
        "request names none; λ is all a route takes from it",
    )


class LedgerConfig(_Strict):
    """Where spend is recorded (the budgets module owns the ledger; this reserves its place)."""

    backend: str = Field(default="sqlite", pattern=r"^(sqlite|redis)$")
    path: str = Field(default="var/ledger.sqlite", description="sqlite: the database file")
    redis_url: str | None = None
    admission_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="a wave refused only because other waves hold budget waits this long for "
        "them to settle before the request gets 429 (server/billing/admission.py)",
    )
    reservation_ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="a wave's hold expires after this (crash safety); must exceed "
        "server.request_timeout_s, the longest a wave can run (default: that plus a minute)",
    )
    spend_log_retention_days: float = Field(
        default=90.0, gt=0, le=3660, allow_inf_nan=False, description="spend logs kept this long"
    )
    pending_settles_path: str | None = Field(
        default=None,
        description="this replica's local journal of settles the store could not take, "
        "replayed until it does (default: pending-settles.sqlite in the folder of `path`, "
        "on either backend)",
    )

    @field_validator("path")
    @classmethod
    def _a_file(cls, path: str, info: ValidationInfo) -> str:
        """SQLite's file: with none or a folder, every metered request would be a 500."""
        if info.data.get("backend") == "sqlite":
            if not path.strip():
                raise ValueError("the sqlite ledger needs a file path")
            if Path(path).is_dir():
                raise ValueError(f"{path!r} is a folder; give the ledger's file in it")
        return path

    @field_validator("pending_settles_path")
    @classmethod
    def _a_journal_file(cls, path: str | None) -> str | None:
        """The journal's own file: not a folder."""
        if path is None:
            return None
        if not path.strip():
            raise ValueError("give a file path, or leave it out for the default")
        if Path(path).is_dir():
            raise ValueError(f"{path!r} is a folder; give the journal's file in it")
        return path

    @model_validator(mode="after")
    def _journal_apart(self) -> LedgerConfig:
        """The journal (given, or its default beside `path`) is none of a SQLite ledger's files:
        not the ledger's (it keeps what that store could not take: locked, full or lost with
        it), nor its WAL, shared-memory or rollback journal (SQLite would take the file for the
        ledger's, and overwrite or replay it)."""
        if self.backend != "sqlite":
            return self
        given = self.pending_settles_path
        journal = given or str(Path(self.path).parent / PENDING_SETTLES_FILE)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if _same_file(journal, self.path + suffix):
                what = "the ledger's own file" if not suffix else f"the ledger's own {suffix} file"
                if given:
                    raise ValueError(
                        f"pending_settles_path {given!r} is {what}; the journal needs its own"
                    )
                raise ValueError(
                    f"the pending-settles journal's default, {journal!r}, is {what}; "
                    "name the ledger's file otherwise, or give pending_settles_path"
                )
        return self


def _same_file(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class AdminSettings(_Strict):
    """The admin API key, as a sha256 hex digest (or set T2SERVE_ADMIN_KEY in the environment)."""

    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


LogLevel = Literal["critical", "error", "warning", "info", "debug"]  # uvicorn's and logging's


class ServerSettings(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, description="'0.0.0.0': every interface")
    port: Annotated[int, Field(ge=0, le=65535), Whole] = 8000
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="SIGTERM waits this long for in-flight requests"
    )
    keepalive_interval_s: float = Field(
        default=2.0, gt=0, description="SSE keep-alive (an empty delta) cadence while waves run"
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="upstream time limit: 504 after it"
    )
    max_body_bytes: Annotated[int, Field(ge=1024), Whole] = Field(
        default=4 * 2**20, description="larger request bodies get 413 before parsing"
    )
    log_level: LogLevel = "info"


def default_ttl(server: ServerSettings) -> float:
    """`ledger.reservation_ttl_s` when the file sets none: the longest a wave runs, plus a
    minute."""
    return server.request_timeout_s + 60.0


class AppConfig(_Strict):
    """The whole file. `engine` is handed to the engine adapter, which validates it itself."""

    demo: bool = Field(
        default=False, description="allow plain-text API keys (the shipped demo config only)"
    )
    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    models: list[ModelConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(
        default_factory=list, description="route entries of `models:` (those with `route:`)"
    )
    verifier_models: list[VerifierModelConfig] = Field(
        default_factory=list, description="reward models on vLLM's pooling runner"
    )
    engine: dict[str, Any] = Field(default_factory=dict)
    ledger: LedgerConfig = Field(default_factory=lambda: LedgerConfig())
    admin: AdminSettings = Field(default_factory=lambda: AdminSettings())
    defaults: ControllerDefaults = Field(default_factory=lambda: ControllerDefaults())
    tenants: list[TenantConfig] = Field(min_length=1)

    @field_validator("tenants")
    @classmethod
    def _unique_tenants(cls, tenants: list[TenantConfig]) -> list[TenantConfig]:
        ids = [t.id for t in tenants]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate tenant id(s): {', '.join(dupes)}")
        digests = [k.digest() for t in tenants for k in t.api_keys]
        if len(digests) != len(set(digests)):
            raise ValueError("the same API key is configured for more than one tenant or twice")
        return tenants

    @model_validator(mode="before")
    @classmethod
    def _split_routes(cls, data: Any) -> Any:
        """`models:` lists served models and routes alike (a route is a model id to clients);
        route entries move to `routes`, and a route naming a model that is not served is
        refused here, with the entry's place in `models:`."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            return data
        entries = data["models"]
        served = [m.get("id") for m in entries if isinstance(m, dict) and "route" not in m]
        routes = list(data.get("routes") or [])
        models = []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, dict) and "route" in entry):
                models.append(entry)
                continue
            names = entry["route"] if isinstance(entry["route"], list) else []
            for j, name in enumerate(names):
                if name not in served:
                    raise ValueError(
                        f"models.{i}.route.{j}: unknown model {name!r} in route "
                        f"{entry.get('id')!r}; served models: {', '.join(map(str, served))}"
                    )
            routes.append(entry)
        return {**data, "models": models, "routes": routes}

    @field_validator("engine")
    @classmethod
    def _engine_settings(cls, engine: dict[str, Any]) -> dict[str, Any]:
        """Check the engine adapter's settings now, so a typo fails at load naming the field."""
        from server.engine.config import EngineConfig  # pydantic only; vLLM is not imported

        _no_model_path(engine, "set models.N.path")
        EngineConfig.model_validate({k: v for k, v in engine.items()})
        return engine

    @model_validator(mode="after")
    def _models_and_routes(self) -> AppConfig:
        """Ids are unique across models and routes; each model's own engine settings are
        valid over the shared ones; a route names served models only, each once."""
        from server.engine.config import EngineConfig

        ids = [m.id for m in self.models] + [r.id for r in self.routes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"models: duplicate model or route id(s): {', '.join(dupes)}")
        # a reward model shares the engines' and readiness's namespace: a repeat would replace
        pooled = [m.id for m in self.verifier_models]
        for i, name in enumerate(pooled):
            if name in ids or name in pooled[:i]:
                raise ValueError(
                    f"verifier_models.{i}.id: {name!r} is already the id of a model, route or "
                    "reward model; each needs its own"
                )
        for i, m in enumerate(self.models):
            try:
                EngineConfig.model_validate(m.engine_settings(self.engine))
            except ValidationError as exc:
                raise ValueError(f"models.{i}.engine ({m.id}): {_describe(exc)}") from None
        served = {m.id for m in self.models}
        for i, r in enumerate(self.routes):
            unknown = [name for name in r.route if name not in served]
            if unknown:
                raise ValueError(f"routes.{i}.route: unknown model(s) {', '.join(unknown)}")
            if len(set(r.route)) != len(r.route):
                raise ValueError(f"routes.{i}.route: route {r.id!r} names a model twice")
        return self

    @model_validator(mode="after")
    def _holds_outlive_requests(self) -> AppConfig:
        """A hold that lapses while its wave still runs lets another replica book the same
        budget again: overspend. The TTL only exists to reclaim holds of crashed servers."""
        if self.ledger.reservation_ttl_s is None:
            self.ledger.reservation_ttl_s = default_ttl(self.server)
        elif self.ledger.reservation_ttl_s <= self.server.request_timeout_s:
            raise ValueError(
                f"ledger.reservation_ttl_s ({self.ledger.reservation_ttl_s:g}) must exceed "
                f"server.request_timeout_s ({self.server.request_timeout_s:g}): a reservation "
                "must not expire while its wave can still run"
            )
        return self

    @model_validator(mode="after")
    def _plain_keys_only_in_demo(self) -> AppConfig:
        if self.demo:
            return self
        for i, tenant in enumerate(self.tenants):
            for j, key in enumerate(tenant.api_keys):
                if key.plain is not None:
                    raise ValueError(
                        f"tenants.{i}.api_keys.{j}.plain: plain-text keys are allowed only with "
                        "'demo: true'; store the sha256 hex digest instead"
                    )
        return self

    @model_validator(mode="after")
    def _verifiers_name_known_models(self) -> AppConfig:
        """A verifier's `model` must be configured: a typo must not start a server whose
        best-of-N silently falls back to voting on every request."""
        served = {m.id for m in self.models}
        pooled = {m.id for m in self.verifier_models}
        for i, tenant in enumerate(self.tenants):
            offset = 0 if tenant.verifier is None else 1
            for j, v in enumerate(tenant.verifier_list()):
                where = "verifier" if (j == 0 and offset) else f"verifiers.{j - offset}"
                known = pooled if v.kind == "reward_model" else served
                if v.kind in ("reward_model", "judge") and v.model not in known:
                    listed = "verifier_models" if v.kind == "reward_model" else "models"
                    raise ValueError(
                        f"tenants.{i}.{where}.model: unknown model {v.model!r} for a "
                        f"{v.kind} verifier; configured {listed}: "
                        f"{', '.join(sorted(known)) or 'none'}"
                    )
        return self

    @model_validator(mode="after")
    def _tenants_name_known_models(self) -> AppConfig:
        """A tenant's allowed models and price keys must be configured ids. A misspelt price
        key leaves the model it meant unpriced, and an unpriced model costs 0: a tenant with a
        currency budget would use it for free. So such a tenant also needs a price (or a "*"
        entry) for every model it may use, its routes' members and verifier models included."""
        served = [m.id for m in self.models]
        routes = {r.id: r for r in self.routes}
        pooled = [m.id for m in self.verifier_models]
        for i, tenant in enumerate(self.tenants):
            for j, name in enumerate(tenant.models):
                if name != "*" and name not in served and name not in routes:
                    raise ValueError(
                        f"tenants.{i}.models.{j}: unknown model {name!r}; models and routes: "
                        f"{', '.join(served + list(routes))}"
                    )
            priced = tenant.prices.models if tenant.prices is not None else {}
            for key in priced:
                if key in routes:
                    raise ValueError(
                        f"tenants.{i}.prices.models.{key}: {key!r} is a route; each wave is "
                        f"billed at the price of the model that drew it, so price those: "
                        f"{', '.join(routes[key].route)}"
                    )
                if key != "*" and key not in served and key not in pooled:
                    raise ValueError(
                        f"tenants.{i}.prices.models.{key}: unknown model {key!r}; models: "
                        f"{', '.join(served + pooled)}"
                    )
            if not bills_money(tenant.budgets, tenant.user_budgets):
                continue
            for model in self.unpriced(tenant):
                raise ValueError(
                    f"tenants.{i}.prices.models: no price for {model!r}, which tenant "
                    f"{tenant.id!r} may use under a currency budget (unpriced, it would "
                    "cost 0); give it one, 0 for a free model, or a '*' entry"
                )
        return self

    def unpriced(self, tenant: TenantConfig) -> list[str]:
        """The models the tenant may be billed for that it has no price for (each would cost
        0 under a currency budget, the tenant's, a user's or a key's)."""
        priced = tenant.prices.models if tenant.prices is not None else {}
        if "*" in priced:
            return []
        routes = {r.id: r for r in self.routes}
        billed = _models_billed(tenant, [m.id for m in self.models], routes)
        return [m for m in billed if m not in priced]

    def check_inprocess_weights(self) -> None:
        """Before in-process engines start: each model they load has weights at its `path`
        (else the engine fails in the background and /readyz stays 503). Checked by the server
        that starts them, not at load: apps given engines serve any path."""
        for i, m in enumerate(self.models):
            inprocess = m.engine_settings(self.engine).get("backend", "inprocess") == "inprocess"
            if inprocess and (problem := weights_problem(m.path)):
                raise ConfigError(f"models.{i}.path: {problem}")

    @property
    def model_ids(self) -> list[str]:
        """Every id a client may ask for: served models, then routes."""
        return [m.id for m in self.models] + [r.id for r in self.routes]

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)

    def route(self, model_id: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.id == model_id), None)


def bills_money(*levels: Budgets | None) -> bool:
    """Whether any of these budgets counts money."""
    for budgets in levels:
        if budgets is None:
            continue
        units = [b.unit for _, b in budgets.windows()]
        if budgets.request is not None:
            units.append(budgets.request.unit)
        if "currency" in units:
            return True
    return False


def _models_billed(
    tenant: TenantConfig, served: list[str], routes: dict[str, RouteConfig]
) -> list[str]:
    """The models a tenant's requests can be billed for, in config order: the served models it
    may ask for, its routes' members, and the models its reward-model and judge verifiers
    run on."""
    allowed = served if "*" in tenant.models else [m for m in tenant.models if m in served]
    members = [m for r in routes.values() if tenant.may_use(r.id) for m in r.route]
    scorers = [v.model for v in tenant.verifier_list()
               if v.kind in ("reward_model", "judge") and v.model]  # fmt: skip
    return list(dict.fromkeys([*allowed, *members, *scorers]))


def _describe(exc: ValidationError) -> str:
    """Each error as `dotted.path: message`; a check across fields names its own path."""
    lines = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err.get("loc", ()))
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def tenant_problem(config: AppConfig, tenant: dict[str, Any]) -> tuple[str | None, str] | None:
    """Whether `tenant` (a `tenants:` entry, made through the admin API) fits this config: its
    models, routes, prices and verifiers checked as the file's tenants are, by AppConfig's own
    validators. The first problem as (the field within the tenant, the message naming it)."""
    data = config.model_dump(mode="python")
    data["tenants"] = [tenant]  # alone: index 0, and no other tenant's problem in the way
    try:
        AppConfig.model_validate(data, context={API_TENANTS: frozenset([tenant.get("id")])})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if loc[:2] == ["tenants", "0"] and len(loc) > 2:
            where = ".".join(loc[2:])
            return where, f"{where}: {msg}"
        if msg.startswith("tenants.0."):  # a check across fields names its path itself
            where, _, text = msg.removeprefix("tenants.0.").partition(": ")
            return where, f"{where}: {text}"
        return None, msg
    return None


def parse_config(data: Any, source: str = "config", api_tenants: Collection[str] = ()) -> AppConfig:
    """Validate an already-loaded mapping; relative paths stay relative to the working directory.
    `api_tenants`: the ids of tenants the admin API made (they have no keys in the config)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return AppConfig.model_validate(data, context={API_TENANTS: frozenset(api_tenants)})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path:
    """`--config` wins, then `T2SERVE_CONFIG`, then configs/default.yaml."""
    chosen = path or os.environ.get(CONFIG_ENV) or "configs/default.yaml"
    return Path(chosen)


def load_config(path: str | os.PathLike[str] | None = None) -> AppConfig:
    file = resolve_config_path(path)
    data = _read_yaml(file, f"cannot read config file {file}", str(file))
    source = str(file)
    if isinstance(data, dict) and isinstance(data.get("tenants"), dict):
        data["tenants"], included = _included_tenants(data["tenants"], file)
        source = f"{file} (tenants from {included})"
    return parse_config(data, source)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with two YAML 1.2 rules: `4e17` is a float, as in JSON (YAML 1.1
    read it as the string "4e17", which the strict budget fields refuse), and a key given twice
    in one mapping is refused (YAML 1.1 lets the last one win: a tenant writing `budgets:`
    twice would silently lose the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML refuses it itself below
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(  # YAML 1.2's floats: the exponent's dot and sign are optional
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(file: Path, unreadable: str, label: str) -> Any:
    """A YAML file's document; anything wrong with it is one ConfigError line naming the file."""
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{unreadable}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong, and where."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return what + where
    return " ".join(str(exc).split())


def _included_tenants(spec: dict[str, Any], config_file: Path) -> tuple[Any, Path]:
    """`tenants: {include: tenants.yaml}`: the tenant list lives in another YAML file (relative
    paths are relative to the main config), so tenants can be managed apart from the server.
    The file holds the list, or a mapping whose one key is `tenants`. Returns the list and
    the file, which errors name beside the main config."""
    if set(spec) != {"include"} or not isinstance(spec["include"], str):
        raise ConfigError(f"{config_file}: tenants: give a list, or {{include: <file>}}")
    path = (config_file.parent / spec["include"]).resolve()
    tenants = _read_yaml(path, f"tenants.include: cannot read {path}", f"tenants.include: {path}")
    if isinstance(tenants, dict):
        if set(tenants) != {"tenants"}:
            extra = ", ".join(sorted(map(str, set(tenants) - {"tenants"}))) or "none"
            raise ConfigError(
                f"tenants.include: {path}: a mapping there holds only 'tenants' (other keys: "
                f"{extra}); server settings go in the main config"
            )
        tenants = tenants["tenants"]
    if not isinstance(tenants, list):
        raise ConfigError(f"tenants.include: {path}: expected a list of tenants")
    return tenants, path
