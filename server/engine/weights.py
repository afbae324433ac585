"""N, a model's parameter count, for FLOPs pricing (2·N per token) and T² curves.

Read from the weights on disk: exact from the safetensors headers (no tensor is loaded), else
estimated from config.json. A model's `params:` in the config file wins over both.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class SizedModel(Protocol):
    """What `model_sizes` needs of a model's config entry."""

    @property
    def id(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def params(self) -> float | None: ...


def parameter_count(path: str | Path) -> float | None:
    """N from the safetensors headers under `path`, else estimated from config.json."""
    root = Path(path)
    total = 0
    for file in sorted(root.glob("*.safetensors")):
        try:
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            continue
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict):
                total += math.prod(int(d) for d in meta.get("shape", []))
    if total:
        return float(total)
    try:
        cfg = json.loads((root / "config.json").read_text())
        d, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        vocab = int(cfg.get("vocab_size", 0))
        return float(12 * layers * d * d + vocab * d)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_sizes(models: Iterable[SizedModel]) -> dict[str, float | None]:
    """N per model id: the configured `params`, else counted from the weights."""
    return {m.id: m.params if m.params is not None else parameter_count(m.path) for m in models}


class SizedVerifierModel(Protocol):
    """A reward model's config entry: weights on disk (in-process) or none (remote)."""

    @property
    def id(self) -> str: ...

    @property
    def path(self) -> str | None: ...

    @property
    def params(self) -> float | None: ...


def verifier_model_sizes(models: Iterable[SizedVerifierModel]) -> dict[str, float | None]:
    """N per reward model: the configured `params`, else counted from local weights."""
    return {
        m.id: m.params if m.params is not None else (parameter_count(m.path) if m.path else None)
        for m in models
    }
