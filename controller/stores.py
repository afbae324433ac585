"""What the stores' protocols share (the ledger's, the admin state's and the learned state's):
the one error a backend raises when it cannot be used."""

from __future__ import annotations


class StoreUnavailable(RuntimeError):
    """A store's backend could not be reached or did not answer in time (Redis gone or silent;
    a SQLite file locked past its busy timeout, full or unreadable), as opposed to a bug. The
    server answers 503 with Retry-After; a reserve whose reply was lost may have left its hold
    behind, which the hold's TTL frees."""
