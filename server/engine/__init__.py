"""The engine adapter: one async interface (`SampleEngine`) over the in-process vLLM engine
(default) or remote OpenAI-compatible upstreams.

Public names:
- `start_engine(**settings) -> SampleEngine`: validate `EngineConfig` and start its backend.
- `EngineConfig`, `SamplingDefaults`, `RemoteConfig`: the settings (config file `engine:`).
- `SampleEngine`, `Sample`, `SamplingParams`, `CacheStats`: the interface and its values.
- Its errors (`EngineError`, `PromptTooLong`, `InvalidSamplingParam`, `EngineDead`,
  `UpstreamTimeout`, `UpstreamError`) live in server/errors.py with the server's others.

vLLM is imported only when the in-process backend starts: importing this package stays cheap.
"""

from server.engine.base import CacheStats, RequestUsage, Sample, SampleEngine, SamplingParams
from server.engine.config import EngineConfig, RemoteConfig, SamplingDefaults
from server.engine.factory import start_engine
from server.errors import (
    EngineDead,
    EngineError,
    InvalidSamplingParam,
    PromptTooLong,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "CacheStats",
    "EngineConfig",
    "EngineDead",
    "EngineError",
    "InvalidSamplingParam",
    "PromptTooLong",
    "RemoteConfig",
    "RequestUsage",
    "Sample",
    "SampleEngine",
    "SamplingDefaults",
    "SamplingParams",
    "UpstreamError",
    "UpstreamTimeout",
    "start_engine",
]
