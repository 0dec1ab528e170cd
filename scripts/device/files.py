"""What the device scripts share: file hashing (imported as a sibling module: each script's own folder is
on sys.path when it runs as ``python3 scripts/device/<script>.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

MIB = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()
