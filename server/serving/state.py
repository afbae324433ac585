"""What serving shares across requests: the config, key ring, engines, samplers, billing,
policies and verifiers. One per app (`app.state.t2`); the routers read it, nothing else does.

`apply` swaps in a new config (keys, tenants, budgets; the ledger backend needs a restart), so
requests already running keep the tenant objects they resolved and nothing in flight is dropped.
`config` is the file's config with the admin store's lasting changes over it (server.admin_state);
`file_config` is the file alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from controller.routing import Route
from server import metrics
from server.admin_state import AdminSync, overlay
from server.api.protocol import MAX_CHOICES
from server.auth import KeyRing
from server.billing.protocol import BillingProvider
from server.config import AppConfig, default_ttl, load_config
from server.engine.pooling import PoolingService
from server.engine.service import EngineService
from server.errors import ConfigError, model_not_found
from server.sampling import Sampler
from server.sampling.policies import policy_book, served_curves
from server.serving.route_table import route_table
from server.verifiers import VerifierBook

log = logging.getLogger("t2serve.serving")
BODY_SLACK = 64 * 1024


class ServingState:
    def __init__(
        self,
        config: AppConfig,
        engines: dict[str, EngineService],
        billing: BillingProvider,
        pooling: dict[str, PoolingService] | None = None,
    ) -> None:
        self.config = self.file_config = config
        self.started = config  # what the engines, ledger and listener were built from
        self.keyring = KeyRing(config)
        self.admin = AdminSync(config.ledger, lambda: self.apply(self.file_config))
        self.engines = engines
        self.billing = billing
        self.policies = policy_book(config)
        sampler = Sampler(engines, self.policies)  # one for all: a route draws from several
        self.samplers = {model: sampler for model in engines}
        self.routes = route_table(config)
        if pooling is None:
            pooling = {m.id: PoolingService(m) for m in config.verifier_models}
        self.verifiers = VerifierBook(engines, pooling)
        self.started_at = int(time.time())
        self.config_path: Path | None = None

    def route(self, model: str) -> Route | None:
        """The route a model id names (None: a served model, or unknown)."""
        return self.routes.get(model)

    def engine(self, model: str) -> EngineService:
        """The model's engine (a route's first candidate's); 404 for a model that is not
        served."""
        route = self.routes.get(model)
        if route is not None:
            model = route.candidates[0].model
        engine = self.engines.get(model)
        if engine is None:
            raise model_not_found(model)
        return engine

    def body_limit(self) -> int:
        """The request-body limit: `server.max_body_bytes`, or less once every engine is up,
        when no body could carry a prompt the largest served context can hold: at most
        MAX_CHOICES prompts of max_prompt_chars characters, 12 bytes each as JSON escapes
        (a surrogate pair), plus room for the rest of the request."""
        configured = self.config.server.max_body_bytes
        if not self.ready():
            return configured
        widest = max(engine.max_prompt_chars() for engine in self.engines.values())
        return min(configured, widest * 12 * MAX_CHOICES + BODY_SLACK)

    def ready(self) -> bool:
        """Every generator and reward model can serve, and the admin state (if used) is loaded."""
        return (
            not self.admin.blocking
            and all(e.ready() for e in self.engines.values())
            and self.verifiers.ready()
        )

    def failures(self) -> list[str]:
        out = [f for engine in self.engines.values() if (f := engine.failure()) is not None]
        out += self.verifiers.failures()
        if self.admin.blocking:
            out.append(f"{self.admin.failure or 'admin state loading'}; retrying")
        return out

    def apply(self, config: AppConfig) -> None:
        """Swap the config in: keys, tenants, budgets, routes, curves. Adding or removing a
        model is refused; what else waits for a restart stays as started (`restart_needed`)."""
        self._check_models_kept(config)  # before anything changes: a refusal leaves all as is
        self._check_holds_outlive_requests(config)
        config = config.model_copy(update={"ledger": self.config.ledger})
        routes = route_table(config)
        curves = served_curves(config, self.policies.versioned)
        self.file_config = config
        self.policies.swap_curves(curves)
        self.routes = routes
        config = self.admin.effective(config)
        self.config = config
        self.keyring = self.admin.keyring(config, self.file_config)
        self.billing.reload(config)
        metrics.configure_labels(tenants=[t.id for t in config.tenants], models=config.model_ids)

    def restart_needed(self, config: AppConfig) -> list[str]:
        """What in `config` differs from the config the server started with and applies only
        after a restart, by config path: the ledger, the shared `engine:` block, the server's
        address, log level and drain time, a model's weights, engine or parameter count
        (FLOPs prices), and a reward model's settings. The rest (tenants, prices, budgets,
        verifiers, routes, curves, timeouts) applies at once."""
        running = self.started
        # a TTL the file leaves to its default follows the timeout; it is no ledger change
        derived = config.ledger.reservation_ttl_s == default_ttl(config.server)
        same = {"reservation_ttl_s"} if derived else set()
        out = ["ledger"] if (config.ledger.model_dump(exclude=same)
                             != running.ledger.model_dump(exclude=same)) else []  # fmt: skip
        out += ["engine"] if config.engine != running.engine else []
        out += [f"server.{name}" for name in ("host", "port", "log_level", "drain_timeout_s")
                if getattr(config.server, name) != getattr(running.server, name)]  # fmt: skip
        was = {m.id: m for m in running.models}
        out += [f"models.{i}" for i, m in enumerate(config.models)
                if m.id in was and (m.path, m.engine, m.params)
                != (was[m.id].path, was[m.id].engine, was[m.id].params)]  # fmt: skip
        rms = {m.id: m for m in running.verifier_models}
        out += [f"verifier_models.{i}" for i, m in enumerate(config.verifier_models)
                if m.id in rms and m != rms[m.id]]  # fmt: skip
        return out

    def _check_holds_outlive_requests(self, config: AppConfig) -> None:
        """The running ledger keeps the hold TTL it started with (ledger settings wait for a
        restart) while a new request timeout applies at once: a timeout reaching that TTL
        would let a hold lapse while its wave still runs (AppConfig's own check, against the
        TTL in force)."""
        ttl = self.started.ledger.reservation_ttl_s
        timeout = config.server.request_timeout_s
        if ttl is not None and timeout >= ttl:
            raise ConfigError(
                f"server.request_timeout_s ({timeout:g}) must stay below the running "
                f"ledger.reservation_ttl_s ({ttl:g}), which changes only on a restart: a "
                "reservation must not expire while its wave can still run"
            )

    def _check_models_kept(self, config: AppConfig) -> None:
        """Engines and reward models start once, at start-up: a reload that adds or removes a
        served or reward model is refused (it would be listed and 404, or unlisted and still
        served), naming the ids. A route over running models may be added."""
        running = [*self.engines, *(m.id for m in self.started.verifier_models)]
        wanted = [m.id for m in config.models] + [m.id for m in config.verifier_models]
        added = [m for m in wanted if m not in running]
        removed = [m for m in running if m not in wanted]
        if added or removed:
            change = [f"adds {', '.join(added)}"] if added else []
            change += [f"removes {', '.join(removed)}"] if removed else []
            raise ConfigError(
                f"models: the new config {' and '.join(change)}; models start once, so a "
                "change of models needs a restart"
            )

    def _check_no_api_tenant_taken(self, config: AppConfig) -> None:
        """A file tenant whose id a tenant made through the admin API has would take over that
        tenant's spend and history and lock its keys out (the file wins an id both hold,
        server.admin_state.shadowed): a reload that does so is refused, naming the entry, while
        the running file that does not is kept."""
        stored = {t.id for t in self.admin.snapshot.tenants if t.live}
        running = {t.id for t in self.file_config.tenants}
        for i, tenant in enumerate(config.tenants):
            if tenant.id in stored and tenant.id not in running:
                raise ConfigError(
                    f"tenants.{i}.id: tenant {tenant.id!r} was made through the admin API; "
                    f"delete it there first (DELETE /admin/tenants/{tenant.id}), or give this "
                    "one another id"
                )

    def reload_from_file(self) -> tuple[AppConfig, list[str]]:
        """Load and validate the config file, then apply it; ConfigError leaves all as it was.
        A file that the stored admin overrides or tenants no longer fit (it dropped the prices
        a stored budget needs, say) is refused too: applied, it would drop every tenant's
        overrides; so is a file that defines a tenant the admin API made
        (`_check_no_api_tenant_taken`).
        Returns the new config and what of it waits for a restart (`restart_needed`)."""
        new = load_config(self.config_path)
        self._check_no_api_tenant_taken(new)
        snapshot = self.admin.snapshot
        try:
            overlay(new, snapshot.overrides, snapshot.tenants)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc}; the admin API's stored overrides or tenants no longer fit this file: "
                "change the file, or replace the override (or delete the tenant) through the "
                "admin API first"
            ) from None
        waiting = self.restart_needed(new)
        self.apply(new)
        if waiting:
            log.warning("%s changed; that applies after a restart", ", ".join(waiting))
        log.info(
            "config reloaded from %s (%d tenants)",
            self.config_path or "the default path",
            len(new.tenants),
        )
        return new, waiting

    async def aclose(self) -> None:
        """Stop the engines this app started and release verifiers and the billing store.
        The engines and reward models stop together: vLLM takes ~5 s to stop each."""
        await asyncio.gather(
            *(engine.shutdown() for engine in self.engines.values()), self.verifiers.aclose()
        )
        await self.admin.aclose()
        await self.policies.aclose()
