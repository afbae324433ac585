"""Aggregation: read an answer out of each sample, then combine the samples into one answer.

Public interface (the server's request loop and the replay harness both use exactly this):

- `get_extractor(name: str, **options) -> Extractor`: an Extractor maps sample text to a
  normalised answer string, or None when the sample abstains. Names: last_number, boxed,
  choice, answer_is, regex (option `pattern` with a named group, preferably `answer`),
  json_field (option `field`, dotted paths allowed), exact, date (the last date as
  MM/DD/YYYY). "a,b" is a fallback chain.
- `normalize_answer(text) -> str | None`: the single normalisation used for vote keys and
  gold answers (numbers by value, simple LaTeX stripped, case and whitespace folded).
- `aggregate(candidates: Sequence[Candidate], method="majority", *, verifier_error=None)
  -> AggregateResult`: methods majority | logprob | verifier | best_of_n. Ties go to the
  earliest first occurrence. The result carries answer, votes, agreement (leader share),
  samples_used, chosen_index (whose text to return), and degraded/note when a verifier
  failure fell back to voting.
- `Verifier` (protocol: `name`, `async score(question, candidates) -> list[float]`),
  `score_candidates(verifier, question, texts, timeout_s)` → VerifyOutcome(scores, error),
  and programmatic checkers (`ProgrammaticVerifier`, `answer_matches`,
  `arithmetic_checker`). I/O verifiers (HTTP, vLLM reward model) are in server/verifiers.py.
"""

from controller.aggregate.extract import EXTRACTOR_NAMES, Extractor, first_of, get_extractor
from controller.aggregate.normalize import normalize_answer
from controller.aggregate.verify import (
    ProgrammaticVerifier,
    Verifier,
    VerifyOutcome,
    answer_matches,
    arithmetic_checker,
    score_candidates,
)
from controller.aggregate.vote import (
    METHODS,
    AggregateResult,
    Candidate,
    aggregate,
    chosen_for,
    count_votes,
    leader,
)

__all__ = [
    "EXTRACTOR_NAMES",
    "METHODS",
    "AggregateResult",
    "Candidate",
    "Extractor",
    "ProgrammaticVerifier",
    "Verifier",
    "VerifyOutcome",
    "aggregate",
    "answer_matches",
    "arithmetic_checker",
    "chosen_for",
    "count_votes",
    "first_of",
    "get_extractor",
    "leader",
    "normalize_answer",
    "score_candidates",
]
