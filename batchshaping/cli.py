"""Command line: batchshaping train | eval | analyze | compare (also python -m batchshaping).

User errors (bad config, missing data, bad checkpoint, a diverged run) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "cifar10_gated_resnet20_cpu"

SET_HELP = """\
Override any config key, dotted by section; repeatable. Examples:
  --set epochs=30 --set optim.lr=0.05 --set data.batch_size=128
  --set loss.l0_weight=1e-3 --set loss.bs_end=0.1 --set precision=fp32
  --set loss.macs_target=0.585 (a compute budget)  --set max_time=2h30m (stop in time)
Sections: data.* (batch_size, root, train_subset, ...), optim.* (lr, weight_decay,
lr_milestones, ...), loss.* (bs_weight, bs_end, l0_weight, l0_start, l0_end,
macs_target, macs_weight, ...), gate.* (hidden, tau, bias_init, noise); top level:
model, epochs, seed, device, precision, step, max_time, pretrained, eval_every,
threads, progress, ... Every schedule point is a fraction of the epochs. An unknown
key's error names the closest valid ones."""

#: Optional dependencies, by the extra of the package that installs them.
EXTRAS = {
    "yaml": "train",
    "tqdm": "train",
    "tensorboard": "train",
    "matplotlib": "analysis",
    "PIL": "imagenet",
}


def cmd_train(args: argparse.Namespace) -> int:
    from batchshaping.config import load_config
    from batchshaping.experiment import resume_config, summary_text, train
    from batchshaping.runtime import shutdown_distributed

    if args.resume:
        if not args.out:
            raise _usage("--resume needs --out, the run folder to continue")
        if args.config:
            raise _usage("--resume continues the run in --out with its own config; drop --config")
        cfg = resume_config(args.out, args.set)
    else:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.set)
        if args.download:
            cfg.data.download = True
    out = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.run_folder = out  # for the Ctrl-C message
    summary = train(cfg, out, args.data_dir, args.resume)
    shutdown_distributed()
    if "stopped_after" in summary or summary.get("already_finished"):  # fit said what happened
        return 0
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(summary_text(summary))
        print(f"wrote {out}/summary.json, log.jsonl, last.pt, best.pt, config.yaml, tb/")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from batchshaping.experiment import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint, args.data_dir, args.batch_size, args.download, args.max_images
    )
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from batchshaping.analysis import analyze_checkpoint

    paths = analyze_checkpoint(
        args.checkpoint, args.out, data_dir=args.data_dir, max_images=args.max_images, download=args.download
    )
    _print_written(paths)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from batchshaping.analysis import compare_runs

    if args.reference is not None and not args.paired:
        raise _usage("--reference names the run of the paired comparison: add --paired")
    if args.download and not args.paired:
        raise _usage("--download fetches the test images of --paired: add --paired")
    paths = compare_runs(
        args.runs,
        args.out,
        paired=args.paired,
        reference=args.reference,
        data_dir=args.data_dir,
        download=args.download,
    )
    if args.paired:  # the answer on the terminal, the details in compare.md
        paired = json.loads(paths[-1].read_text())["paired"]
        for r in paired["runs"]:
            print(
                f"{r['run']} against {paired['reference']}: {100 * r['diff']:+.2f} points of top-1 "
                f"({paired['level']:.0%} CI {100 * r['low']:+.2f} to {100 * r['high']:+.2f}), "
                f"McNemar p = {r['p']:.3g}, on the same {r['n']} test images"
            )
    _print_written(paths)
    return 0


def _print_written(paths: list[Path]) -> None:
    """'wrote reports/r32/report.md (+ 8 plots, analysis.json, per_image.npz)': the report first."""
    from batchshaping.analysis import describe_outputs

    if paths:
        print(describe_outputs(paths))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batchshaping", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a model (default: the short CPU gated_resnet20 recipe)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SET_HELP,
    )
    t.add_argument("--config", help=f"YAML recipe, or a recipe's name (default {DEFAULT_CONFIG})")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (below)"
    )
    t.add_argument(
        "--data-dir", help="dataset folder (default: data.root, $BATCHSHAPING_DATA, ./data/cifar10)"
    )
    t.add_argument("--out", help="run folder (default runs/<config>-<time>)")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out with its own config and data folder"
    )
    t.add_argument(
        "--download", action="store_true", help="download the official CIFAR-10 archive if missing"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its data set's test split")
    e.add_argument("checkpoint", help="a .pt file or a run folder (its last.pt)")
    e.add_argument("--data-dir", help="dataset folder (default: the one the run was trained on)")
    e.add_argument("--batch-size", type=_positive_int, help="default: the config's data.eval_batch_size")
    e.add_argument(
        "--max-images", type=_positive_int, default=None, help="evaluate only the first N test images"
    )
    e.add_argument(
        "--download", action="store_true", help="download the official CIFAR-10 archive if missing"
    )
    e.set_defaults(func=cmd_eval)

    a = sub.add_parser("analyze", help="gate statistics, compute versus difficulty, plots and report.md")
    a.add_argument("checkpoint", help="a .pt file or a run folder (its last.pt)")
    a.add_argument("--out", required=True, help="folder for report.md, the plots and the numbers")
    a.add_argument("--data-dir", help="dataset folder (default: the one the run was trained on)")
    a.add_argument(
        "--max-images", type=_positive_int, default=None, help="analyse only the first N test images"
    )
    a.add_argument(
        "--download", action="store_true", help="download the official CIFAR-10 archive if missing"
    )
    a.set_defaults(func=cmd_analyze)

    c = sub.add_parser("compare", help="accuracy versus MACs across run folders")
    c.add_argument("runs", nargs="+", help="run folders (each with summary.json)")
    c.add_argument("--out", required=True, help="folder for compare.md and the plot")
    c.add_argument(
        "--paired",
        action="store_true",
        help="evaluate each run's last.pt and test its top-1 against the reference's on the same images "
        "(difference with 95%% CI, McNemar p)",
    )
    c.add_argument(
        "--reference",
        metavar="RUN",
        help="the run the others are compared with (default: the first dense run)",
    )
    c.add_argument(
        "--data-dir",
        metavar="DIR",
        help="dataset folder for --paired (default: the one each run was trained on)",
    )
    c.add_argument(
        "--download",
        action="store_true",
        help="with --paired: download the official CIFAR-10 archive if missing",
    )
    c.set_defaults(func=cmd_compare)
    return p


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse then prints the usage line and exits with status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _usage(message: str) -> Exception:
    from batchshaping.config import ConfigError

    return ConfigError(message)


def main(argv: list[str] | None = None) -> int:
    from batchshaping.checkpoint import CheckpointError
    from batchshaping.config import ConfigError
    from batchshaping.data import DataError
    from batchshaping.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    user_errors = (
        ConfigError,
        CheckpointError,
        DataError,
        TrainingDiverged,
        FileNotFoundError,
        PermissionError,
    )
    # A scheduler's SIGTERM (a cluster's time limit, `timeout`, `kill`) ends the command like Ctrl-C: the
    # run keeps its last checkpoint and says how to continue, instead of dying without a word.
    previous = None
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (main() called from a thread)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"batchshaping {args.command}: error: {e.name} is not installed; "
            f'pip install "batchshaping[{extra}]"',
            file=sys.stderr,
        )
        return 2
    except user_errors as e:
        print(f"batchshaping {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _interrupted(args: argparse.Namespace) -> str:
    out = getattr(args, "run_folder", None)
    if out is None:
        return "interrupted"
    if not (Path(out) / "last.pt").is_file():
        return f"interrupted before the first checkpoint; nothing to resume in {out}"
    return f"interrupted; continue with: batchshaping train --out {out} --resume"


if __name__ == "__main__":
    sys.exit(main())
