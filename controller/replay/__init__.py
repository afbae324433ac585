"""The replay harness: run sampling policies over recorded samples (pure logic, no I/O
beyond reading the file).

- `load_replay(path, extractor, skip_empty=False) -> (questions, skipped_lines)`; problems
  raise `ReplayDataError` naming the line. A sample's answer is its recorded `answer` (null
  abstains), else the extractor (default `DEFAULT_EXTRACTOR`) on its text.
- `replay(questions, policy_spec_or_factory, perms=20, seed=0, avg_samples=None)
  -> ReplayResult` (accuracy, accuracy_ci95, mean_samples, mean_tokens, questions, policy).
- `ALL_POLICIES` (what `--policy all` compares) and `SWEEPS` (curves for `--plot`).
- `controller.replay.loo.leave_one_out(files)`: the leave-one-file-out protocol (`--loo`).
"""

from controller.replay.data import (
    DEFAULT_EXTRACTOR,
    EmptySamples,
    ReplayDataError,
    ReplayQuestion,
    ReplaySample,
    load_replay,
    parse_lines,
)
from controller.replay.run import (
    ALL_POLICIES,
    SWEEPS,
    QuestionOutcome,
    ReplayResult,
    family,
    replay,
    run_question,
)

__all__ = [
    "ALL_POLICIES",
    "DEFAULT_EXTRACTOR",
    "SWEEPS",
    "EmptySamples",
    "QuestionOutcome",
    "ReplayDataError",
    "ReplayQuestion",
    "ReplayResult",
    "ReplaySample",
    "family",
    "load_replay",
    "parse_lines",
    "replay",
    "run_question",
]
