"""curves.json: fitted T² curves, the one document every other part of t2serve reads.

One approach per file: `loss` (Approach 1, pass@k reported as exp(-L)), `accuracy` (Approach 2,
Beta-regression links on Chinchilla's L(N, D)) or `beta` (one Beta per model). The file also
records the data it came from (path, sha256, filter) and the fit diagnostics.

An optional `serving` block (written by `t2serve calibrate`, read by the server through
`controller.scaling.served`) holds, per served model id, what serving needs beyond the Beta in
`models`: N, the measured majority-vote curve Acc(k) and the t2 leader prior. Files without it
read as before.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.scaling.beta import BetaFit
from controller.scaling.laws import beta_links, beta_pass_at_k, chinchilla_loss, t2_loss

FloatArray = NDArray[np.float64]
Approach = Literal["loss", "accuracy", "beta"]
APPROACHES: tuple[str, ...] = ("loss", "accuracy", "beta")


class CurvesError(ValueError):
    """A curves file that cannot be read or a query it cannot answer."""


class _Strict(BaseModel):
    # JSON's Infinity and NaN (and 1e400, read as inf) are no fit: t2's arithmetic turns them
    # into NaN predictions
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LossParams(_Strict):
    """Approach 1: L(N, D, k) = E + A/N^alpha + B/D^beta + G/k^gamma."""

    E: float = Field(ge=0)
    A: float = Field(ge=0)
    alpha: float = Field(ge=0)
    B: float = Field(ge=0)
    beta: float = Field(ge=0)
    G: float = Field(ge=0)
    gamma: float = Field(ge=0)


class AccuracyParams(_Strict):
    """Approach 2: Chinchilla L(N, D) plus the Beta-regression links theta0..theta4."""

    E: float = Field(ge=0)
    A: float = Field(ge=0)
    alpha: float = Field(ge=0)
    B: float = Field(ge=0)
    beta: float = Field(ge=0)
    theta0: float
    theta1: float
    theta2: float = Field(gt=0, le=1)
    theta3: float
    theta4: float


class PowerLaw(_Strict):
    """-log pass@k ~ A k^(-b): the simpler curve the Beta fit is compared against."""

    A: float
    b: float
    rmse_log: float


class BetaModel(_Strict):
    """One model's fitted difficulty distribution."""

    a: float = Field(gt=0)
    b: float = Field(gt=0)
    p_max: float = Field(default=1.0, gt=0, le=1)
    params: float | None = None
    tokens: float | None = None
    n_questions: int = 0
    log_likelihood: float | None = None
    log_likelihood_plain: float | None = None
    rmse_log: float | None = None  # of log pass@k against the counts on the k grid
    power_law: PowerLaw | None = None

    def fit(self) -> BetaFit:
        return BetaFit(self.a, self.b, self.p_max)


class DataInfo(_Strict):
    path: str
    sha256: str
    rows: int
    where: str | None = None


class PriorParams(_Strict):
    """The t2 leader prior Beta(a, b) (controller.policy.prior.LeaderPrior)."""

    a: float = Field(gt=0)
    b: float = Field(gt=0)


class ServingModel(_Strict):
    """What serving one model needs, measured on its calibration questions.

    accuracy[k - 1] is the majority-vote accuracy with k samples, k = 1..samples (the vote as
    `controller.aggregate.vote` breaks ties). Its difficulty Beta is `models[<same id>]`.
    """

    params: float = Field(gt=0)
    tokens: float | None = Field(default=None, gt=0)
    accuracy: list[float] = Field(min_length=1)
    leader_prior: PriorParams
    questions: int = Field(ge=1)
    samples: int = Field(ge=1)
    calibration: str = Field(min_length=1, description="which questions calibrated it")
    data: DataInfo | None = None
    leader_accuracy: list[list[float]] | None = Field(
        default=None,
        description="[k-1][v-1]: P(the majority answer is right | k samples, v for the leader)",
    )

    @model_validator(mode="after")
    def _curve_is_a_curve(self) -> ServingModel:
        if len(self.accuracy) != self.samples:
            raise ValueError(
                f"accuracy holds {len(self.accuracy)} values, samples is {self.samples}"
            )
        if any(not (0.0 <= v <= 1.0) for v in self.accuracy):
            raise ValueError("accuracy values must lie in [0, 1]")
        for k, row in enumerate(self.leader_accuracy or [], start=1):
            if len(row) != k or any(not (0.0 <= v <= 1.0) for v in row):
                raise ValueError(f"leader_accuracy row {k} needs {k} values in [0, 1]")
        return self


class Curves(BaseModel):
    """A fitted curves document. Build it with the fitters in controller.scaling.fit."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["t2serve.curves/1"] = "t2serve.curves/1"
    approach: Approach
    parameters: LossParams | AccuracyParams | None = None
    models: dict[str, BetaModel] | None = None
    data: DataInfo | None = None
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    serving: dict[str, ServingModel] | None = None

    @model_validator(mode="after")
    def _section_matches_approach(self) -> Curves:
        if self.approach == "loss" and not isinstance(self.parameters, LossParams):
            raise ValueError("approach 'loss' needs parameters E, A, alpha, B, beta, G, gamma")
        if self.approach == "accuracy" and not isinstance(self.parameters, AccuracyParams):
            raise ValueError(
                "approach 'accuracy' needs parameters E, A, alpha, B, beta, theta0..theta4"
            )
        if self.approach == "beta" and not self.models:
            raise ValueError("approach 'beta' needs a non-empty 'models' mapping")
        for model_id in self.serving or {}:
            if model_id not in (self.models or {}):
                raise ValueError(
                    f"serving.{model_id} needs its difficulty Beta in models.{model_id}"
                )
        return self

    # ---- queries -------------------------------------------------------------------------------

    def loss(self, k: ArrayLike, *, params: float, tokens: float) -> FloatArray:
        """Approach 1's predicted mean -log pass@k."""
        if not isinstance(self.parameters, LossParams):
            raise CurvesError(f"loss() needs a 'loss' fit, this file is '{self.approach}'")
        return t2_loss(params, tokens, _checked_k(k), **self.parameters.model_dump())

    def chinchilla_loss(self, *, params: ArrayLike, tokens: ArrayLike) -> FloatArray:
        """L(N, D) without the sampling term (both loss and accuracy fits have one)."""
        p = self.parameters
        if p is None:
            raise CurvesError("a 'beta' fit has no L(N, D)")
        return chinchilla_loss(params, tokens, E=p.E, A=p.A, alpha=p.alpha, B=p.B, beta=p.beta)

    def beta_for(
        self, *, params: float | None = None, tokens: float | None = None, model: str | None = None
    ) -> BetaFit:
        """The per-question Beta at (N, D) for an accuracy fit, or of a model for a beta fit."""
        if isinstance(self.parameters, AccuracyParams):
            n, d = _need_nd(params, tokens, self.approach)
            p = self.parameters
            lval = self.chinchilla_loss(params=n, tokens=d)
            a, b = beta_links(
                lval,
                theta0=p.theta0,
                theta1=p.theta1,
                theta2=p.theta2,
                theta3=p.theta3,
                theta4=p.theta4,
            )
            return BetaFit(float(a), float(b))
        if self.approach == "beta":
            return self._select_model(params, tokens, model).fit()
        raise CurvesError("a 'loss' fit has no per-question Beta; use an accuracy or beta fit")

    def pass_at_k(
        self,
        k: ArrayLike,
        *,
        params: float | None = None,
        tokens: float | None = None,
        model: str | None = None,
    ) -> FloatArray:
        """Predicted pass@k. Loss fits give exp(-L) (a geometric mean over questions, so a lower
        bound on the arithmetic pass@k); accuracy and beta fits give 1 - B(a, b+k)/B(a, b)."""
        ks = _checked_k(k)
        if self.approach == "loss":
            n, d = _need_nd(params, tokens, self.approach)
            return np.exp(-self.loss(ks, params=n, tokens=d))
        if self.approach == "accuracy":
            n, d = _need_nd(params, tokens, self.approach)
            fit = self.beta_for(params=n, tokens=d)
            return beta_pass_at_k(fit.a, fit.b, ks)
        fit = self._select_model(params, tokens, model).fit()
        return np.asarray(fit.pass_at_k(ks), dtype=float)

    def _select_model(
        self, params: float | None, tokens: float | None, model: str | None
    ) -> BetaModel:
        models = self.models or {}
        if model is not None:
            if model not in models:
                known = ", ".join(sorted(models)[:8])
                raise CurvesError(f"model '{model}' is not in the curves file (have: {known}...)")
            return models[model]
        if params is not None and tokens is not None:
            hits = [
                m
                for m in models.values()
                if m.params is not None
                and m.tokens is not None
                and math.isclose(m.params, params, rel_tol=1e-6)
                and math.isclose(m.tokens, tokens, rel_tol=1e-6)
            ]
            if len(hits) == 1:
                return hits[0]
            raise CurvesError(
                f"no single model with params={params:g}, tokens={tokens:g}: pass --model"
            )
        if len(models) == 1:
            return next(iter(models.values()))
        raise CurvesError(f"the beta fit holds {len(models)} models: pass --model NAME")

    # ---- persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_text(
                json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
            )
            tmp.replace(target)
        finally:  # a failed write or rename (the target a folder) leaves no stray temp file
            tmp.unlink(missing_ok=True)


def load_curves(path: str | Path) -> Curves:
    """Read and validate a curves.json; raises CurvesError with a one-line reason."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise CurvesError(f"curves file not found: {p}") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8
        raise CurvesError(f"cannot read curves file {p}: {str(exc)[:200]}") from None
    try:
        return Curves.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "document"
        raise CurvesError(f"invalid curves file {p}: {where}: {err['msg']}") from None


def _checked_k(k: ArrayLike) -> FloatArray:
    ks = np.asarray(k, dtype=float)
    if ks.size == 0 or np.any(~np.isfinite(ks)) or np.any(ks < 1):
        raise CurvesError("k must be finite and >= 1")
    return ks


def _need_nd(params: float | None, tokens: float | None, approach: str) -> tuple[float, float]:
    if params is None or tokens is None:
        raise CurvesError(f"a '{approach}' fit needs both params and tokens")
    if not (params > 0 and tokens > 0 and math.isfinite(params) and math.isfinite(tokens)):
        raise CurvesError("params and tokens must be positive and finite")
    return float(params), float(tokens)
