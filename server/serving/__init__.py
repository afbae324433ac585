"""Serving: what turns a validated API request into an answer.

- `ServingState` (`state`): what requests share (config, keys, engines, samplers, billing).
- `CompletionService` (`completion`): chat and text completions, plain or streamed.
- `resolve_job` (`jobs`): caps, controller names, tokenization and context check, once.
- `events`: what a stream yields before SSE encoding.
"""

from server.serving.completion import CompletionService
from server.serving.state import ServingState

__all__ = ["CompletionService", "ServingState"]
