"""The one wording for "these questions were not scored", shared by every command that reads
logs (`replay --data`, `--loo`, `--route`, `calibrate --from-replay`), so a user sees the same
line wherever a failed call in their log shrinks the scored set."""

from __future__ import annotations

from collections.abc import Sequence

SHOWN = 5
NO_SAMPLES = "with no samples, at lines"
"""What `replay --data` and `--loo` say of a question a failed call left empty."""


def left_out_line(count_of: str, names: Sequence[object], where: str | None = None) -> str:
    """ "<where>: left out N question(s) <count_of>: a, b, c …", the first few names shown."""
    shown = ", ".join(map(str, names[:SHOWN])) + (" …" if len(names) > SHOWN else "")
    head = f"{where}: " if where else ""
    return f"{head}left out {len(names)} question(s) {count_of}: {shown}"
