"""The majority vote (controller.aggregate.vote: most votes, ties to the answer seen first)
after every draw of many draw orders at once, in numpy: replays and calibration score the
server's vote on every prefix of thousands of seeded orders."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]


def running_leader(drawn: IntArray) -> tuple[IntArray, IntArray]:
    """(leader, votes), each shaped like `drawn`: after each draw of every row, the vote's
    answer (most votes, ties to the one seen first; -1 before any answer) and its votes.
    Draw by draw over all rows at once: the drawn answer takes the lead when it passes the
    leader, or ties it having been seen first. `drawn` holds answer codes (-1: abstained)
    indexing a (rows, largest code + 1) count table: code answers per question, not per set."""
    rows, k_max = drawn.shape
    width = max(1, int(drawn.max(initial=-1)) + 1)
    counts = np.zeros((rows, width), dtype=np.int32)
    first = np.zeros((rows, width), dtype=np.int32)
    lead = np.full(rows, -1)
    leader = np.empty_like(drawn)
    votes = np.empty_like(drawn)
    every = np.arange(rows)
    for k in range(k_max):
        r = every[drawn[:, k] >= 0]
        a = drawn[r, k]
        counts[r, a] += 1
        new = counts[r, a] == 1
        first[r[new], a[new]] = k
        held = np.maximum(lead[r], 0)
        c, f = counts[r, a], first[r, a]
        lc, lf = counts[r, held], first[r, held]
        take = (lead[r] < 0) | (c > lc) | ((c == lc) & (f < lf))
        lead[r[take]] = a[take]
        leader[:, k] = lead
        votes[:, k] = np.where(lead >= 0, counts[every, np.maximum(lead, 0)], 0)
    return leader, votes
