"""An output file's path checked before the work that writes it: a plot that cannot be written
is said at once, in one line, not as a traceback after minutes of replay."""

from __future__ import annotations

import contextlib
from pathlib import Path


def plot_path_problem(path: Path) -> str | None:
    """Why a figure cannot be written to `path` (None: it can). Creates missing folders, as
    the writers would, and probes the file itself."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        return f"{path}: name a figure file (.png, .svg, .pdf, …)"
    if path.is_dir():
        return f"{path} is a folder"
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    if not existed:
        with contextlib.suppress(OSError):
            path.unlink()
    return None
