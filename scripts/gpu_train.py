"""GPU fast path: train gated_resnet20 on CIFAR-10 with a shortened paper recipe; print epoch time, img/s.

Needs only torch and numpy (no yaml / tqdm / tensorboard): run from the repository root on a CUDA machine,

    python scripts/gpu_train.py --data-dir ../shared/data/cifar10 --epochs 30 --out runs/gpu_r20

The data live on the GPU as uint8 and are augmented there (crop + flip) by the package's TensorLoader;
bf16 autocast and channels_last are on; ``--compile`` adds torch.compile. Results go to
``<out>/summary.json`` and ``<out>/log.jsonl`` (the package's own outputs) and ``<out>/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from batchshaping.config import TrainConfig  # noqa: E402
from batchshaping.experiment import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--model", default="gated_resnet20")
    ap.add_argument("--l0-weight", type=float, default=0.0015)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default="runs/gpu_train")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("warning: CUDA is not available; running on CPU", file=sys.stderr)

    cfg = TrainConfig(name="gpu_" + args.model, model=args.model, epochs=args.epochs, progress=False)
    cfg.data.batch_size = args.batch_size
    cfg.loss.l0_weight = args.l0_weight
    cfg.compile = args.compile
    cfg.precision = "auto"
    t0 = time.perf_counter()
    summary = train(cfg, args.out, args.data_dir)
    total = time.perf_counter() - t0
    log = [json.loads(line) for line in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    epoch_times = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(log, log[1:], strict=False)]
    steady = sorted(epoch_times)[len(epoch_times) // 2] if epoch_times else log[0]["wall_time_s"]
    speed = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": args.model,
        "epochs": args.epochs,
        "first_epoch_s": log[0]["wall_time_s"],
        "median_epoch_s": steady,
        "train_img_per_s": 50000 / steady,
        "total_s": total,
        "compile": args.compile,
        "top1": summary["top1"],
        "mac_ratio": summary["mac_ratio"],
    }
    (Path(args.out) / "speed.json").write_text(json.dumps(speed, indent=2) + "\n")
    print(json.dumps(speed, indent=2))


if __name__ == "__main__":
    main()
