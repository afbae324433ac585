"""The server's config file: one YAML document validated by pydantic, selected by `--config` or
`T2SERVE_CONFIG`.

A bad file is refused at start with `ConfigError`, whose message names the offending field as a
dotted path (`tenants.0.api_keys.0.sha256: ...`), because a typo in a tenant's caps must never
start a server that bills differently than its operator thinks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.budget.models import Budgets, PacingSettings, Prices, RateLimits
from server.errors import ConfigError as ConfigError  # raised by the loaders below

CONFIG_ENV = "T2SERVE_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no NaN or Infinity


def hash_key(key: str) -> str:
    """The stored form of an API key: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


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

    policy: str = "t2"
    aggregator: str = "majority"
    extractor: str = "last_number"
    max_samples: int = Field(default=16, ge=1, le=1024)
    max_cost: float | None = Field(default=None, gt=0)
    deadline_ms: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(
        default=64, ge=1, description="generation length when the request names none"
    )


class VerifierConfig(_Strict):
    """An HTTP scoring service for the `verifier` and `best_of_n` aggregators.

    Each sample is POSTed as {"question": <rendered prompt>, "candidate": <sample text>} and
    must answer {"score": <number>}, higher is better (`verifier` weighs votes by it, so scores
    should be ≥ 0, e.g. a probability). A failure or timeout degrades that request to a
    majority vote, noted in `t2.note`; it never fails the request.
    """

    url: str = Field(pattern=r"^https?://", description="scoring endpoint")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="all samples of a request")
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. Authorization")
    concurrency: int = Field(default=8, ge=1, le=256, description="samples scored at once")


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
    retries: int = Field(default=5, ge=0, le=20, description="after the first attempt")
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


class TenantConfig(_Strict):
    """A tenant: who it is (keys), what it may use (models) and how its requests are sampled.

    Caps (`max_samples`, `max_cost`, `deadline_ms`) bound the per-request `t2` options; with
    `allow_raising_caps: false` (the default) a request may lower but never raise them.
    Budget and price fields are added by the budgets module (issue 6).
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys: list[ApiKey] = Field(min_length=1)
    models: list[str] = Field(default_factory=lambda: ["*"], description="model ids, or '*'")
    policy: str | None = None
    aggregator: str | None = None
    extractor: str | None = None
    json_field: str | None = Field(
        default=None,
        description="with a JSON-schema response_format, vote over this (dotted) field",
    )
    max_samples: int | None = Field(default=None, ge=1, le=1024)
    max_cost: float | None = Field(default=None, gt=0)
    deadline_ms: int | None = Field(default=None, ge=1)
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
    alerts: AlertSettings | None = None

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class ModelConfig(_Strict):
    """A served model name and where its weights are."""

    id: str = Field(min_length=1)
    path: str = Field(min_length=1)
    owned_by: str = "t2serve"
    params: float | None = Field(
        default=None, gt=0, description="N for FLOPs (2·N per token); default: from the weights"
    )


class LedgerConfig(_Strict):
    """Where spend is recorded (the budgets module owns the ledger; this reserves its place)."""

    backend: str = Field(default="sqlite", pattern=r"^(sqlite|redis)$")
    path: str = "var/ledger.sqlite"
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


class AdminSettings(_Strict):
    """The admin API key, as a sha256 hex digest (or set T2SERVE_ADMIN_KEY in the environment)."""

    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="SIGTERM waits this long for in-flight requests"
    )
    keepalive_interval_s: float = Field(
        default=2.0, gt=0, description="SSE comment cadence while waves run"
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="upstream time limit: 504 after it"
    )
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="larger request bodies get 413 before parsing"
    )
    log_level: str = "info"


class AppConfig(_Strict):
    """The whole file. `engine` is handed to the engine adapter, which validates it itself."""

    demo: bool = Field(
        default=False, description="allow plain-text API keys (the shipped demo config only)"
    )
    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    models: list[ModelConfig] = Field(min_length=1)
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

    @field_validator("engine")
    @classmethod
    def _engine_settings(cls, engine: dict[str, Any]) -> dict[str, Any]:
        """Check the engine adapter's settings now, so a typo fails at load naming the field."""
        from server.engine.config import EngineConfig  # pydantic only; vLLM is not imported

        EngineConfig.model_validate({k: v for k, v in engine.items()})
        return engine

    @model_validator(mode="after")
    def _holds_outlive_requests(self) -> AppConfig:
        """A hold that lapses while its wave still runs lets another replica book the same
        budget again: overspend. The TTL only exists to reclaim holds of crashed servers."""
        if self.ledger.reservation_ttl_s is None:
            self.ledger.reservation_ttl_s = self.server.request_timeout_s + 60.0
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

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        lines.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(lines)


def parse_config(data: Any, source: str = "config") -> AppConfig:
    """Validate an already-loaded mapping; relative paths stay relative to the working directory."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path:
    """`--config` wins, then `T2SERVE_CONFIG`, then configs/default.yaml."""
    chosen = path or os.environ.get(CONFIG_ENV) or "configs/default.yaml"
    return Path(chosen)


def load_config(path: str | os.PathLike[str] | None = None) -> AppConfig:
    file = resolve_config_path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tenants"), dict):
        data["tenants"] = _included_tenants(data["tenants"], file)
    return parse_config(data, str(file))


def _included_tenants(spec: dict[str, Any], config_file: Path) -> Any:
    """`tenants: {include: tenants.yaml}`: the tenant list lives in another YAML file (relative
    paths are relative to the main config), so tenants can be managed apart from the server."""
    if set(spec) != {"include"} or not isinstance(spec["include"], str):
        raise ConfigError(f"{config_file}: tenants: give a list, or {{include: <file>}}")
    path = (config_file.parent / spec["include"]).resolve()
    try:
        tenants = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"tenants.include: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"tenants.include: {path}: not valid YAML: {exc}") from None
    if isinstance(tenants, dict) and "tenants" in tenants:
        tenants = tenants["tenants"]
    if not isinstance(tenants, list):
        raise ConfigError(f"tenants.include: {path}: expected a list of tenants")
    return tenants
