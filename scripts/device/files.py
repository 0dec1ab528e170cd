"""What the device scripts share: file hashing and a run folder's contents (imported as a sibling module:
each script's own folder is on sys.path when it runs as ``python3 scripts/device/<script>.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

MIB = 1 << 20
#: What a stopped run needs to resume elsewhere: the checkpoint, the log it appends to, its config.
RUN_FILES = ("last.pt", "log.jsonl", "config.yaml")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def log_epochs(log: Path) -> int:
    """Epochs a run's log.jsonl records (one line each; 0 if there is none)."""
    return sum(1 for line in log.read_text().splitlines() if line.strip()) if log.is_file() else 0
