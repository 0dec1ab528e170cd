"""The output folder of ``analyze`` and ``compare``: checked before any work, and the files written there
listed and described in one line for the command line."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """Create the output folder and check that a file can be written there.

    Raises PermissionError naming the folder when it cannot be created (e.g. its parent is a regular
    file) or written (the CLI turns it into a one-line error).
    """
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass  # os.access is not enough: root ignores mode bits, read-only mounts do not
    except OSError as e:
        raise PermissionError(
            f"output folder {str(path)!r} cannot be created or written ({e.strerror or e}); "
            "pass another --out"
        ) from None
    return path


def written_files(out: str | os.PathLike[str], analysis: dict[str, Any]) -> list[Path]:
    """The files ``analyze`` wrote into ``out`` for ``analysis``: report.md first, then the PNGs of
    analysis["plots"] (none for a dense model or without plots), analysis.json and per_image.npz."""
    out = Path(out)
    plot_paths = [out / name for name in analysis["plots"].values()]
    return [out / "report.md", *plot_paths, out / "analysis.json", out / "per_image.npz"]


def describe_outputs(paths: Sequence[str | os.PathLike[str]]) -> str:
    """One line for the command line from the paths :func:`~batchshaping.analysis.analyze_checkpoint` or
    :func:`~batchshaping.analysis.compare_runs` returned: ``"wrote reports/r32/report.md (+ 8 plots,
    analysis.json, per_image.npz)"``."""
    first, *rest = (Path(p) for p in paths)
    pngs = sum(p.suffix == ".png" for p in rest)
    others = [p.name for p in rest if p.suffix != ".png"]
    extra = ([f"{pngs} plot{'s' if pngs != 1 else ''}"] if pngs else []) + others
    return f"wrote {first}" + (f" (+ {', '.join(extra)})" if extra else "")
