"""One checkpoint format: atomic writes, validated loads, the training state saved and restored side by
side, models rebuilt from a saved config, and warm starts from other weights.

A checkpoint is a dict with keys ``format`` (= FORMAT), ``model`` (state_dict), ``config`` (TrainConfig as
a dict), ``num_classes``, ``class_names``, ``epoch`` (epochs completed), ``optimizer``, ``scaler``, ``rng``
(torch / numpy / python states), ``best_metric``, ``metrics`` (last evaluation), ``wall_time_s``,
``macs_correction`` (the MAC budget's calibration, see :func:`batchshaping.train.fit`) and ``git_commit``.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from batchshaping.config import TrainConfig, config_from_dict
from batchshaping.models import model_from_config

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
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..), before torch 1.6 a bare pickle (protocol byte 0x80); a file
    # shorter than the header is left to torch.load, whose failure says truncated
    if len(head) == 4 and not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint (a file written by torch.save: a zip archive or a pickle); "
            "check the path (a run folder, its last.pt / best.pt, or saved weights)"
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
) -> tuple[nn.Module, TrainConfig]:
    """:func:`load_model` for a checkpoint dict already loaded with :func:`load_checkpoint`."""
    cfg = config_from_dict(ckpt["config"])
    model = model_from_config(cfg, ckpt.get("num_classes"))
    diff = weight_differences(model.state_dict(), ckpt["model"])
    if any(diff.values()):  # fit() trains any nn.Module, but a checkpoint names its model by its config
        raise CheckpointError(
            f"the checkpoint's weights do not fit {cfg.model}, the model its config names "
            f"({describe_differences(diff)}): it holds another network, trained with fit() from Python; "
            "build that network and load the checkpoint's 'model' state_dict into it"
        )
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), cfg


# ------------------------------------------------------------------------------------- training state


@dataclass
class TrainingState:
    """Everything that a killed run needs to continue exactly: what :func:`fit` trains and its progress."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs completed
    best_metric: float = -math.inf  # best evaluation metric so far (selects best.pt)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation
    wall_time_s: float = 0.0  # training time of the epochs completed
    macs_correction: float = 0.0  # added to loss.macs_target in training so evaluation lands on it

    def save(self, path: Path, cfg: TrainConfig, num_classes: int, class_names: list[str] | None) -> None:
        """Write the state (with the RNG states, so a resumed run draws the same numbers) atomically."""
        state = {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": cfg.to_dict(),
            "num_classes": num_classes,
            "class_names": class_names,
            "epoch": self.epoch,
            "rng": rng_state(),
            "best_metric": self.best_metric,
            "metrics": self.metrics,
            "wall_time_s": self.wall_time_s,
            "macs_correction": self.macs_correction,
            "git_commit": git_commit(),
        }
        atomic_save(state, path)

    def restore(self, path: Path, device: torch.device) -> None:
        """Load a state written by :meth:`save`."""
        ckpt = load_checkpoint(path, map_location=device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        set_rng_state(ckpt["rng"])
        self.epoch = ckpt["epoch"]
        self.best_metric = ckpt["best_metric"]
        self.metrics = ckpt["metrics"]
        self.wall_time_s = ckpt["wall_time_s"]
        self.macs_correction = ckpt.get("macs_correction", 0.0)  # 0 until a budget is calibrated


# ---------------------------------------------------------------------------------------- warm start


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The model weights in ``path``: a checkpoint of this package (its ``model``), a plain state_dict,
    or a dict holding one under ``state_dict`` / ``model``; a ``module.`` prefix (DDP) is dropped."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"pretrained weights {str(p)!r} not found (config key 'pretrained')")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        state = load_checkpoint(p)  # ours hold RNG states, which weights_only refuses; validated here
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"pretrained weights {str(p)!r} are not a state_dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def weight_differences(own: dict[str, Tensor], state: dict[str, Tensor]) -> dict[str, list[str]]:
    """Where the weights ``state`` do not fit a model's ``own`` state_dict: {"shape mismatch": ["name
    (saved shape) vs (model's shape)"], "missing": names of own not in state, "unexpected": the reverse}."""
    return {
        "shape mismatch": [
            f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ],
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
    }


def describe_differences(diff: dict[str, list[str]]) -> str:
    """:func:`weight_differences` in one line: the count and the first names of each kind."""
    return "; ".join(
        f"{what} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for what, keys in diff.items()
        if keys
    )


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Warm-start ``model`` (or ``model.backbone`` for a segmentation model) from the weights in ``path``
    (see :func:`read_weights`): a dense checkpoint of this package, a plain state_dict or a torchvision-named
    ResNet ``.pth``.

    Every weight and BatchNorm statistic of the target must be there, except the gate parameters
    (``*.gate.*``, which keep their initialisation: open) and, for a backbone without a classifier, the
    source's ``fc.*``. Anything else (a missing or unexpected key, a shape mismatch such as another number of
    classes) raises CheckpointError naming the keys. Returns {"missing": [...], "skipped": [...]}.
    """
    state = read_weights(path)
    target = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model
    own = target.state_dict()
    skipped = [k for k in state if k.startswith("fc.") and not any(o.startswith("fc.") for o in own)]
    state = {k: v for k, v in state.items() if k not in skipped}
    diff = weight_differences(own, state)
    # Old torchvision weights lack BN's num_batches_tracked; it only matters for momentum=None.
    diff["missing"] = [k for k in diff["missing"] if ".gate." not in k and "num_batches_tracked" not in k]
    if any(diff.values()):
        raise CheckpointError(
            f"pretrained weights {str(path)!r} do not fit the model: {describe_differences(diff)}. They must "
            "come from the same architecture (e.g. resnet32 for gated_resnet32) with as many classes"
        )
    target.load_state_dict(state, strict=False)  # BN fills in a missing num_batches_tracked itself
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    return {"missing": missing, "skipped": skipped}
