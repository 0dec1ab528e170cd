"""One checkpoint format: atomic writes, validated loads, model rebuilt from the saved config.

A checkpoint is a dict with keys ``format`` (= FORMAT), ``model`` (state_dict), ``config`` (TrainConfig as
a dict), ``epoch`` (epochs completed), ``optimizer``, ``rng`` (torch / numpy / python states), ``best_top1``,
``metrics`` (last evaluation) and ``git_commit``.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "batchshaping-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or not one of ours."""


def git_commit() -> str | None:
    """The current git commit of the source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`atomic_save` during training."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} not found (give a .pt file or a run folder with last.pt)"
        )
    try:
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, python tuples). Only load
        # checkpoints you trust, as with any pickle.
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for truncated / garbage files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: {e}); "
            "use the other checkpoint of the run (best.pt / last.pt) or retrain"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a batchshaping checkpoint (no format tag {FORMAT!r})")
    for key in ("model", "config", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}; it is incomplete")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild the model of a checkpoint and load its weights. Returns (model in eval mode, TrainConfig)."""
    return model_from_checkpoint(load_checkpoint(path, map_location), map_location)


def model_from_checkpoint(
    ckpt: dict[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """:func:`load_model` for a checkpoint dict already loaded with :func:`load_checkpoint`."""
    from batchshaping.config import config_from_dict
    from batchshaping.train import build_model

    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg, ckpt.get("num_classes"))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), cfg
