"""Command line: ``batchshaping train | eval | analyze | compare`` (also ``python -m batchshaping``).

User errors (bad config, missing data, bad checkpoint) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "cifar10_gated_resnet20_cpu"


def _config_path(name: str | None) -> Path | None:
    """A config given as a path, or as a recipe name found in ./configs or the installed configs folder."""
    if name is None:
        name = DEFAULT_CONFIG
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for folder in (Path("configs"), Path(__file__).resolve().parent.parent / "configs"):
        q = folder / f"{name}.yaml"
        if q.exists():
            return q
    return p.with_suffix(".yaml")


def cmd_train(args: argparse.Namespace) -> int:
    from batchshaping.config import load_config
    from batchshaping.train import format_summary, shutdown_distributed, train_cifar10

    cfg = load_config(_config_path(args.config), args.set)
    if args.download:
        cfg.data.download = True
    out = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if cfg.data.dataset == "cifar10":
        summary = train_cifar10(cfg, args.data_dir, out, args.resume)
        text = format_summary(summary) if "top1" in summary else None
    else:
        from batchshaping.tasks import format_task_summary, run_dataset_training  # ImageNet / Cityscapes

        summary = run_dataset_training(cfg, args.data_dir, out, args.resume)
        text = format_task_summary(summary)
    shutdown_distributed()
    if text is not None and int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(text)
        print(f"outputs in {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from batchshaping.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    device = torch.device("cpu" if not torch.cuda.is_available() else "cuda")
    model.to(device)
    if cfg.data.dataset == "cifar10":
        from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, TensorLoader, load_cifar10, resolve_data_dir
        from batchshaping.macs import MacCounter
        from batchshaping.runtime import resolve_precision
        from batchshaping.train import evaluate

        data = load_cifar10(resolve_data_dir(args.data_dir or cfg.data.root))
        bs = args.batch_size or 500
        loader = TensorLoader(data.x_test, data.y_test, bs, False, device, CIFAR10_MEAN, CIFAR10_STD)
        counter = MacCounter(model, (3, 32, 32))
        metrics = evaluate(model, loader, counter, resolve_precision("auto", device)).metrics()
    else:  # ImageNet / Cityscapes: the validation set of the checkpoint's config
        from batchshaping.tasks import evaluate_dataset

        metrics = evaluate_dataset(model, cfg, args.data_dir, args.batch_size, ckpt.get("class_names"))
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from batchshaping.analysis import analyze_checkpoint

    analyze_checkpoint(args.checkpoint, args.out, data_dir=args.data_dir, max_images=args.max_images)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from batchshaping.analysis import compare_runs

    compare_runs(args.runs, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batchshaping", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (default: the short CPU gated_resnet20 recipe)")
    t.add_argument("--config", help=f"YAML recipe or its name in configs/ (default {DEFAULT_CONFIG})")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. epochs=30")
    t.add_argument("--data-dir", help="dataset folder (default: $BATCHSHAPING_DATA, then ./data/cifar10)")
    t.add_argument("--out", help="run folder (default runs/<config>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    t.add_argument(
        "--download", action="store_true", help="download the official CIFAR-10 archive if missing"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval", help="evaluate a checkpoint on its dataset's test set (CIFAR-10, ImageNet or Cityscapes val)"
    )
    e.add_argument("checkpoint")
    e.add_argument("--data-dir", help="dataset folder (default: the checkpoint config's data.root)")
    e.add_argument("--batch-size", type=int, help="default: 500 for CIFAR-10, data.eval_batch_size otherwise")
    e.set_defaults(func=cmd_eval)

    a = sub.add_parser("analyze", help="gate statistics, compute versus difficulty, plots and report.md")
    a.add_argument("checkpoint")
    a.add_argument("--out", required=True)
    a.add_argument("--data-dir")
    a.add_argument("--max-images", type=int, default=None, help="analyse only the first N test images")
    a.set_defaults(func=cmd_analyze)

    c = sub.add_parser("compare", help="accuracy versus MACs across run folders")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    from batchshaping.checkpoint import CheckpointError
    from batchshaping.config import ConfigError

    args = build_parser().parse_args(argv)
    from batchshaping.data import DataError

    # ImportError: a missing optional extra (e.g. matplotlib for analyze); its message names the extra.
    user_errors = (ConfigError, CheckpointError, DataError, FileNotFoundError, PermissionError, ImportError)
    try:
        return args.func(args)
    except user_errors as e:
        print(f"batchshaping {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
