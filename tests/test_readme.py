"""README.md's Python examples run as written (the training example at a smaller size), so they cannot
fall behind the API."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
EXAMPLES = [b for b in BLOCKS if "import batchshaping" in b]  # the others are fragments of these
# The training example, shrunk to seconds: each replacement must still find its text.
SMALLER = {'["epochs=10"]': '["epochs=1"]', "5000": "256", "1000": "64"}


def test_readme_has_self_contained_examples():
    assert len(EXAMPLES) >= 3 and sum("fit(" in b for b in EXAMPLES) == 1


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/ relative to the working folder
    if "fit(" in block:
        for old, new in SMALLER.items():
            assert old in block, f"README's training example changed: shrink it here anew ({old!r})"
            block = block.replace(old, new)
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    if "fit(" in block:
        assert (tmp_path / "runs" / "mine" / "summary.json").is_file()
