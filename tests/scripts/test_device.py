"""The device runbook's scripts (scripts/device/): the call plan, carrying stopped runs to a later session,
and the speed read from a run's log. The whole sequence is played on CPU by scripts/device/dry_run.sh."""

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

DEVICE = Path(__file__).resolve().parents[2] / "scripts" / "device"
sys.path.insert(0, str(DEVICE))  # the scripts import their sibling files.py as a top-level module

import assemble  # noqa: E402
import codec  # noqa: E402
import pack  # noqa: E402
import stage  # noqa: E402

MIB = stage.MIB


def manifest(n: int) -> dict:
    return {"pieces": [{"file": f"cifar10.{k}of{n}.xz", "bytes": 39 * MIB} for k in range(1, n + 1)]}


def run(name: str, mib: float) -> dict:
    return {"run": name, "file": f"{name}.tar", "bytes": int(mib * MIB)}


def test_carried_runs_fill_the_room_of_the_data_calls_then_get_calls_of_their_own():
    rooms, call_room = [6 * MIB, 9 * MIB, 6 * MIB], 48 * MIB
    per_call = stage.assign([run("a", 4), run("b", 4), run("c", 4)], rooms, call_room)
    assert [[e["run"] for e in c] for c in per_call] == [["b"], ["a"], ["c"]]  # each into the most room left
    per_call = stage.assign([run(x, 4) for x in "abcdef"], rooms, call_room)
    assert len(per_call) == 4 and len(per_call[2]) == 2  # two did not fit: one more call, before the last
    assert sum(len(c) for c in per_call) == 6
    with pytest.raises(SystemExit, match="does not fit"):
        stage.assign([run("huge", 60)], rooms, call_room)


def test_calls_carry_each_piece_once_and_the_last_runs_the_job():
    m = manifest(3)
    resume = {"runs": [run("a", 4), run("b", 4)], "id": "x"}
    per_call = [[resume["runs"][0]], [], [resume["runs"][1]]]
    seq = stage.calls(m, "RECIPE=paper bash scripts/device/run.sh a b", resume, per_call, bench=True)
    pieces = [f for c in seq for f in c["carry"] if f.endswith(".xz")]
    assert pieces == [f".devdata/cifar10.{k}of3.xz" for k in (1, 2, 3)]
    assert all(".devdata/resume.json" in c["carry"] for c in seq)
    assert ".devdata/resume/a.tar" in seq[0]["carry"] and ".devdata/resume/b.tar" in seq[2]["carry"]
    assert "--probe" in seq[0]["command"] and "bench_train_gpu" in seq[1]["command"]
    assert seq[-1]["command"].startswith("RECIPE=paper") and seq[-1]["timeout_s"] == 600
    # A carry-only call (runs that fit nowhere else) carries no piece; the last piece stays with the job.
    seq = stage.calls(m, "job", resume, [[], [], [resume["runs"][0]], [resume["runs"][1]]], bench=False)
    assert [sum(f.endswith(".xz") for f in c["carry"]) for c in seq] == [1, 1, 0, 1]
    assert seq[-1]["carry"][1] == ".devdata/cifar10.3of3.xz" and "bench" not in seq[1]["command"]


def test_run_folders_follow_the_training_scripts_names():
    names = ["resnet20", "gated_resnet32_bs_l0_0.001"]
    assert stage.run_folders(names, "paper", None, 0, "cuda") == [
        "resnet20_paper_e500_gpu",
        "gated_resnet32_bs_l0_0.001_paper_e500_gpu",
    ]
    assert stage.run_folders(names[:1], "cpu", 36, 1, "cuda") == ["resnet20_e36_s1_gpu"]
    assert stage.default_runs("paper") == [f"gated_resnet32_bs_l0_{w}" for w in ("0.0001", "0.0003", "0.001")]
    with pytest.raises(SystemExit, match="unknown run name"):
        stage.run_folders(["resnet21"], "paper", None, 0, "cuda")


def write_log(path: Path, times: list[float]) -> None:
    records = [json.dumps({"epoch": i + 1, "wall_time_s": t}) for i, t in enumerate(times)]
    path.write_text("".join(r + "\n" for r in records))


def test_speed_counts_only_this_jobs_epochs_after_its_first(tmp_path):
    # 3 epochs of an earlier session (10 s each), then this job: a slow first epoch, then 2 s each.
    write_log(tmp_path / "log.jsonl", [10, 20, 30, 45, 47, 49, 51])
    out = tmp_path / "run.log"
    out.write_text(
        "training step: captured (step=auto on CUDA: ...)\n"
        "run folder runs/repro/x: gated_resnet32 (cifar10_gated_resnet32) on cuda (bfloat16), "
        "epochs 4-500, 195 steps each\n"
    )
    s = pack.speed(tmp_path / "log.jsonl", 3, out)
    assert s == {
        "step_path": "captured",
        "step_precision": "bfloat16",
        "epochs_this_job": 4,
        "first_epoch_s": 15.0,
        "median_epoch_s": 2.0,
    }


def carried(tmp_path: Path, epochs: int) -> tuple[dict, Path]:
    """A stash holding one carried run folder (as stage.py bundles it) at ``epochs`` epochs."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "last.pt").write_bytes(b"checkpoint")
    write_log(src / "log.jsonl", list(range(1, epochs + 1)))
    stash = tmp_path / "stash"
    (stash / "resume").mkdir(parents=True)
    tar_path = stash / "resume" / "r.tar"
    with tarfile.open(tar_path, "w") as tar:
        for f in ("last.pt", "log.jsonl"):
            tar.add(src / f, f"runs/repro/r/{f}")
    entry = {"run": "r", "file": "r.tar", "sha256": stage.sha256_file(tar_path), "epoch": epochs}
    return {"runs": [entry], "id": "x"}, stash


def test_carried_runs_are_restored_unless_further_along_here(tmp_path):
    r, stash = carried(tmp_path, 7)
    repro = tmp_path / "repo" / "runs" / "repro"
    assemble.restore_runs(r, stash, repro)
    assert (repro / "r" / "last.pt").read_bytes() == b"checkpoint"
    (repro / "r" / "last.pt").write_bytes(b"further")  # a rerun on the same machine went on training
    write_log(repro / "r" / "log.jsonl", list(range(1, 10)))
    assemble.restore_runs(r, stash, repro)
    assert (repro / "r" / "last.pt").read_bytes() == b"further"


def test_a_missing_carried_run_stops_the_job_instead_of_restarting_it(tmp_path):
    r, stash = carried(tmp_path, 7)
    (stash / "resume" / "r.tar").unlink()
    with pytest.raises(SystemExit) as e:
        assemble.restore_runs(r, stash, tmp_path / "repro")
    assert e.value.code == 3


def test_finished_runs_publish_model_only_weights_with_a_manifest(tmp_path):
    import torch

    ckpt = tmp_path / "runs" / "repro" / "r_gpu" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(3)}, "config": {"model": "resnet20"}, "optimizer": {"s": 1}}, ckpt)
    entry = {
        "run": "r_gpu",
        "status": "complete",
        "weights": {"kind": "full checkpoint", "sha256": stage.sha256_file(ckpt)},
        "command": "python -m batchshaping train ...",
        "epochs_done": 500,
        "top1": 0.9,
        "mac_ratio": 1.0,
        "device": "H200",
        "precision": "bfloat16",
    }
    stopped = {**entry, "run": "s_gpu", "status": "stopped"}
    m = {"runs": [entry, stopped], "created_utc": "2026-12-01T00:00:00Z", "source_digest": "abc"}
    assert pack.publish(m, tmp_path) == ["weights/cifar10/r_gpu.pt"]
    kept = torch.load(tmp_path / "weights/cifar10/r_gpu.pt", weights_only=False)
    assert "optimizer" not in kept and torch.equal(kept["model"]["w"], torch.ones(3))
    (listed,) = json.loads((tmp_path / "weights/cifar10/manifest.json").read_text())["weights"]
    assert listed["sha256"] == stage.sha256_file(tmp_path / "weights/cifar10/r_gpu.pt")
    assert listed["command"] == entry["command"] and listed["top1"] == 0.9


def test_the_pixel_codec_is_lossless():
    rng = np.random.default_rng(0)
    flat = np.stack([np.zeros((32, 32, 3)), np.full((32, 32, 3), 255)]).astype(np.uint8)
    ramp = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None, None] * 8, (1, 32, 32, 3))
    for x in (rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), flat, np.ascontiguousarray(ramp)):
        r = codec.encode(x)
        assert r.dtype == np.uint8 and r.shape == x.shape
        np.testing.assert_array_equal(codec.decode(r), x)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(np.zeros((2, 3, 32, 32), dtype=np.uint8))


def test_staged_pieces_assemble_into_the_same_arrays(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 6, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    built = stage.build(tmp_path, arrays, 2, 1, 10 * MIB)
    for spec in built["specs"]:  # the README's sums are those of the real data set
        spec["sha256"] = stage.sha256_bytes(arrays[spec["name"]].tobytes())
    m = {"id": "t", "arrays": built["specs"], "raw_bytes": built["raw_bytes"], "pieces": built["pieces"]}
    m["transform"] = {"codec": "med-green", "images": 9}
    out = assemble.assemble(m, tmp_path, loader_check=False)
    train = [np.load(out / f"cifar10_train_part{i}.npz") for i in (1, 2)]
    np.testing.assert_array_equal(np.concatenate([t["x_train"] for t in train]), arrays["x_train"])
    np.testing.assert_array_equal(np.load(out / "cifar10_test.npz")["y_test"], arrays["y_test"])
