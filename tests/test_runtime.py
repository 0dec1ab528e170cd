"""Where a run executes: the CPU's bf16 units decide `precision: auto` and the machine that results name."""

from pathlib import Path

import pytest
import torch

from batchshaping import runtime
from batchshaping.config import ConfigError

CPU = torch.device("cpu")


def _cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(runtime, "CPUINFO", path)


@pytest.mark.parametrize(
    ("flags", "units", "auto"),
    [
        ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "AVX512-BF16/AMX", torch.bfloat16),
        ("avx2 avx512f avx512_bf16", "AVX512-BF16 only", torch.bfloat16),
        ("avx2 avx512f", "no fast bf16", None),
        ("avx2", "no fast bf16", None),
    ],
)
def test_machine_names_the_bf16_units_and_auto_precision_follows_them(
    tmp_path, monkeypatch, flags, units, auto
):
    _cpuinfo(tmp_path, monkeypatch, flags)
    torch_threads = torch.get_num_threads()
    desc = runtime.machine_description(CPU)
    assert desc.startswith(f"Test CPU ({units}), ")
    assert desc.endswith(f"{torch_threads} thread{'' if torch_threads == 1 else 's'}")
    # Results split the description at its first comma to name the CPU: the units must not hold one.
    assert desc.split(",")[0] == f"Test CPU ({units})"
    assert runtime.resolve_precision("auto", CPU) is auto


def test_missing_cpuinfo_means_no_fast_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "absent")
    assert runtime.cpu_flags() == set()
    assert not runtime.cpu_has_fast_bf16()
    assert "(no fast bf16)" in runtime.machine_description(CPU)


def test_explicit_precision_wins_over_the_cpu_and_fp16_on_cpu_is_refused(tmp_path, monkeypatch):
    _cpuinfo(tmp_path, monkeypatch, "avx2")
    assert runtime.resolve_precision("bf16", CPU) is torch.bfloat16
    assert runtime.resolve_precision("fp32", CPU) is None
    with pytest.raises(ConfigError, match="precision=bf16"):
        runtime.resolve_precision("fp16", CPU)
