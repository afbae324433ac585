"""Rate limits as the API shows them: OpenAI's x-ratelimit-* headers and its 429 error.

OpenAI sends, on every response of a rate-limited account:
`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests`
and the same three for `-tokens`; limits and remainders are integers and resets are Go duration
strings ("1s", "6m0s", "20ms"). Here each figure is the tightest level's (the tenant's or the
key's, whichever has less left), and a reset is when that level next frees capacity: the oldest
admitted request (or the oldest second of tokens) sliding out of the 60 s window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from controller.budget.ledger import RequestUsage, WindowUsage


def go_duration(seconds: float) -> str:
    """A duration as Go prints it (OpenAI's reset headers): 20ms, 1.5s, 6m0s, 1h2m3s."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


def tightest_requests(requests: Sequence[RequestUsage]) -> RequestUsage | None:
    return min(requests, key=lambda r: (r.remaining, -r.limit.limit), default=None)


def tightest_tokens(usage: Sequence[WindowUsage]) -> WindowUsage | None:
    rates = [u for u in usage if u.limit.kind == "rate"]
    return min(rates, key=lambda u: (u.remaining or 0.0, -u.limit.limit), default=None)


def ratelimit_headers(
    requests: Sequence[RequestUsage], usage: Sequence[WindowUsage], now: float
) -> dict[str, str]:
    """The x-ratelimit-* headers for what a call to the ledger returned (none if unlimited)."""
    out: dict[str, str] = {}
    r = tightest_requests(requests)
    if r is not None:
        out["x-ratelimit-limit-requests"] = str(r.limit.limit)
        out["x-ratelimit-remaining-requests"] = str(r.remaining)
        out["x-ratelimit-reset-requests"] = go_duration(r.reset_in(now))
    t = tightest_tokens(usage)
    if t is not None:
        out["x-ratelimit-limit-tokens"] = str(int(t.limit.limit))
        out["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(t.remaining or 0.0)))
        reset = t.reset_in(now) if t.oldest_bucket is not None else 0.0
        out["x-ratelimit-reset-tokens"] = go_duration(reset)
    return out
