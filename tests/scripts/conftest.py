"""What the tests of the shell scripts share: a stand-in for Python, run folders as training leaves them."""

import stat
from pathlib import Path


def stage_runs(
    tmp: Path, fake_python: str, done: tuple[str, ...] = (), started: tuple[str, ...] = ()
) -> tuple[Path, Path, Path]:
    """In tmp: the executable `python` (text fake_python), the empty `calls.txt` it may record into, and in
    `runs/` a folder per run with last.pt, plus summary.json for the runs in `done` (finished). Returns the
    paths of the three."""
    tmp.mkdir(parents=True, exist_ok=True)
    fake = tmp / "python"
    fake.write_text(fake_python)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp / "runs"
    for run in done + started:
        (out / run).mkdir(parents=True, exist_ok=True)
        (out / run / "last.pt").touch()
        if run in done:
            (out / run / "summary.json").write_text("{}")
    calls = tmp / "calls.txt"
    calls.write_text("")
    return fake, out, calls
