"""What the stores' protocols share (the ledger's, the admin state's and the learned state's):
the one error a backend raises when it cannot be used."""

from __future__ import annotations


class StoreUnavailable(RuntimeError):
    """A store's backend could not be reached, did not answer in time or refused to serve (Redis
    gone, silent, out of memory, read-only or not at its URL; a SQLite file locked past its busy
    timeout, full, unreadable, unopenable or corrupt), as opposed to a bug. The
    server answers 503 with Retry-After; a reserve whose reply was lost may have left its hold
    behind, which the hold's TTL frees."""
