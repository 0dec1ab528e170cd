"""Analysis of trained checkpoints and runs: gate statistics, compute versus difficulty, reports.

- :func:`analyze_checkpoint` (``batchshaping analyze``): one checkpoint on its data set's test split
  (CIFAR-10, ImageNet or Cityscapes, read as ``batchshaping eval`` reads it) -> PNG plots, report.md,
  analysis.json and per_image.npz. Modules: ``collect`` (the evaluation pass with per-image records),
  ``numbers`` (analysis.json), ``figures`` and ``plots`` (the PNGs), ``markdown`` (report.md),
  ``report`` (reads the checkpoint and the data, writes the files).
- :func:`compare_runs` (``batchshaping compare``): several run folders -> accuracy-versus-MACs plot,
  compare.md and compare.json.
- :mod:`batchshaping.analysis.stats`: the pure statistics behind them.

Needs matplotlib (``pip install batchshaping[analysis]``).
"""

from batchshaping.analysis.collect import PassResult, collect
from batchshaping.analysis.compare import compare_runs, load_run, run_kind
from batchshaping.analysis.markdown import render_report
from batchshaping.analysis.numbers import build_analysis
from batchshaping.analysis.outputs import describe_outputs, prepare_out, written_files
from batchshaping.analysis.report import analyze_checkpoint, analyze_data, analyze_model
from batchshaping.analysis.stats import (
    auc,
    gate_classes,
    mcnemar_exact,
    paired_accuracy,
    per_class_means,
    per_layer_counts,
    rankdata,
    spearman,
    spearman_interval,
)

__all__ = [
    "PassResult",
    "analyze_checkpoint",
    "auc",
    "analyze_data",
    "analyze_model",
    "build_analysis",
    "collect",
    "compare_runs",
    "describe_outputs",
    "gate_classes",
    "load_run",
    "mcnemar_exact",
    "paired_accuracy",
    "per_class_means",
    "per_layer_counts",
    "prepare_out",
    "rankdata",
    "render_report",
    "run_kind",
    "spearman",
    "spearman_interval",
    "written_files",
]
