"""``batchshaping analyze`` on the other tasks ``eval`` takes: tiny ImageNet and Cityscapes layouts, with
checkpoints written by the training code's own TrainingState (untrained weights, planted gates)."""

import json
import re

import numpy as np
import pytest
import torch

import batchshaping as bs
from batchshaping.analysis.figures import TILE_MAX_SIDE, image_source
from batchshaping.analysis.numbers import MAX_CLASSES_SHOWN, classes_shown
from batchshaping.checkpoint import TrainingState
from batchshaping.cli import main
from batchshaping.config import load_config
from batchshaping.experiment import evaluate_checkpoint
from batchshaping.gates import gate_modules
from batchshaping.macs import MacCounter
from batchshaping.models import model_from_config
from tests.data.test_cityscapes import write_cityscapes
from tests.data.test_imagenet import CLASSES, write_imagenet

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["data.workers=0", "device=cpu", "precision=fp32"]
GATED_PLOTS = {
    "gate_classes_per_layer.png",
    "gate_prob_hist.png",
    "macs_hist.png",
    "macs_vs_entropy_loss.png",
    "images_most_macs.png",
    "images_fewest_macs.png",
}


def checkpoint(recipe, sets, path, num_classes, class_names=None):
    """An epoch-1 checkpoint of ``recipe`` (with ``sets``), untrained but for its gates: the first gating
    module's gates depend on the input (large weights, bias 0), the second's are closed (bias -20)."""
    cfg = load_config(recipe, [*COMMON, *sets])
    torch.manual_seed(0)
    model = model_from_config(cfg, num_classes)
    gates = [gate for _, gate in gate_modules(model)]
    with torch.no_grad():
        gates[0].fc2.weight.normal_(0, 3.0)
        gates[0].fc2.bias.zero_()
        gates[1].fc2.bias.fill_(-20.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainingState(model, opt, torch.amp.GradScaler("cpu", enabled=False), epoch=1)
    state.save(path, cfg, num_classes, class_names)
    return path


def report_images(out):
    """The image files that report.md links to (each must exist)."""
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert all((out / n).is_file() for n in names)
    return set(names)


def test_analyze_reads_an_imagenet_checkpoints_val_split_with_its_classes_and_input_size(tmp_path, capsys):
    root = write_imagenet(tmp_path / "imagenet")  # 3 classes x 4 val images, 48 x 40 JPEGs
    sets = [f"data.root={root}", "data.image_size=32", "data.eval_batch_size=4"]
    ckpt = checkpoint("imagenet_gated_resnet18", sets, tmp_path / "run" / "last.pt", 3, CLASSES)
    out = tmp_path / "report"
    assert main(["analyze", str(ckpt), "--out", str(out), "--max-images", "10"]) == 0
    assert "(+ 8 plots, analysis.json, per_image.npz)" in capsys.readouterr().out
    a = json.loads((out / "analysis.json").read_text())
    assert a["data"] == "ImageNet val" and a["num_images"] == 10 and "task" not in a
    assert [c["class"] for c in a["per_class"]] == CLASSES  # the checkpoint's class list
    assert [c["images"] for c in a["per_class"]] == [4, 4, 2]  # the first 10 images, in folder order
    # MACs at the 32 x 32 evaluation crop of the data, not at the model's default 224 x 224.
    assert a["macs"]["dense"] == MacCounter(bs.create_model("resnet18", num_classes=3), (3, 32, 32)).dense
    assert a["gates"]["layers"][1]["counts"]["always_off"] == a["gates"]["layers"][1]["gates"]
    assert report_images(out) == GATED_PLOTS | {"macs_correct_vs_incorrect.png", "macs_per_class.png"}
    per_image = np.load(out / "per_image.npz")
    assert sorted(per_image.files) == ["entropy", "label", "loss", "macs", "pred"]
    assert per_image["label"].tolist() == [0] * 4 + [1] * 4 + [2] * 2


def test_analyze_segmentation_reports_per_image_pixel_measures_and_leaves_out_class_plots(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cityscapes")  # 4 val images, 64 x 128 labels
    sets = [f"data.root={root}", "data.image_size=32", "data.eval_size=[32,64]", "data.eval_batch_size=3"]
    ckpt = checkpoint("cityscapes_gated_pspnet50", [*sets, "sync_bn=false"], tmp_path / "run" / "last.pt", 19)
    out = tmp_path / "report"
    assert main(["analyze", str(ckpt), "--out", str(out)]) == 0
    assert "(+ 6 plots, analysis.json, per_image.npz)" in capsys.readouterr().out
    a = json.loads((out / "analysis.json").read_text())
    assert a["task"] == "segmentation" and a["data"] == "Cityscapes val" and a["num_images"] == 4
    assert "top1" not in a and "per_class" not in a and "correct_vs_incorrect" not in a
    # The same numbers as `batchshaping eval`, from the same data.
    ev = evaluate_checkpoint(ckpt)
    assert a["miou"] == pytest.approx(ev["miou"]) and a["pixel_acc"] == pytest.approx(ev["pixel_acc"])
    assert a["macs"]["mean"] == pytest.approx(ev["macs_mean"])
    assert a["macs"]["dense"] == MacCounter(bs.create_model("pspnet50"), (3, 32, 64)).dense
    assert [c["class"] for c in a["class_iou"]][:2] == ["road", "sidewalk"]
    per_image = np.load(out / "per_image.npz")
    assert sorted(per_image.files) == ["entropy", "loss", "macs", "pixel_acc"]
    pixel_acc = per_image["pixel_acc"]
    assert len(pixel_acc) == 4 and 0 <= pixel_acc.min() <= pixel_acc.max() <= 1
    # Every image has as many labelled pixels, so the set's pixel accuracy is the mean of the images'.
    assert pixel_acc.mean() == pytest.approx(a["pixel_acc"])
    assert set(a["spearman"]) == {"macs_vs_pixel_acc", "macs_vs_entropy", "macs_vs_loss"}
    most = a["extremes"]["most_macs"]
    assert sorted(r["index"] for r in most) == [0, 1, 2, 3]
    assert [r["pixel_acc"] for r in most] == pytest.approx(pixel_acc[[r["index"] for r in most]].tolist())
    assert report_images(out) == GATED_PLOTS
    report = (out / "report.md").read_text()
    assert (
        "- MACs of correct versus incorrect images: a segmented image" in report
        and "- MACs per class: an image holds" in report
    )
    assert "| mIoU / pixel accuracy |" in report and "| road |" in report


def test_grids_shrink_large_images_read_back_from_a_dataloader_and_undo_the_normalisation():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    raw = torch.rand(3, 3, 320, 640)  # three frames in [0, 1], 2:1 like Cityscapes
    normalised = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    loader = torch.utils.data.DataLoader(list(zip(normalised, range(3), strict=True)), batch_size=2)
    tiles = image_source(loader, mean, std)([2, 0])
    assert tiles.shape == (2, 3, TILE_MAX_SIDE // 2, TILE_MAX_SIDE)
    assert np.allclose(tiles, torch.nn.functional.avg_pool2d(raw[[2, 0]], 4).numpy(), atol=1e-5)
    small = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)  # CIFAR-sized tiles are left alone
    assert np.array_equal(image_source((small, torch.zeros(4)), mean, std)([3, 1]), small[[3, 1]].numpy())


def test_many_classes_show_those_with_the_most_and_the_fewest_macs():
    per_class = [{"class": f"c{i}", "label": i, "images": 1, "macs_mean": float(i)} for i in range(100)]
    per_class[50]["images"], per_class[50]["macs_mean"] = 0, None
    shown, note = classes_shown(per_class)
    assert [c["label"] for c in shown] == [*range(99, 79, -1), *range(19, -1, -1)]
    assert "100 classes, 99 with images" in note
    assert classes_shown(per_class[:MAX_CLASSES_SHOWN]) == (per_class[:MAX_CLASSES_SHOWN], None)


def test_analyze_and_eval_use_the_runs_precision_and_layout_and_agree(tmp_path):
    """A run trained in bf16, channels_last: analyze evaluates like `batchshaping eval` (and the run's own
    evaluations) -- bf16 autocast, channels_last -- so both report the same top-1 and MACs, and the report
    says which precision it used."""
    from batchshaping.analysis import analyze_checkpoint

    root = write_imagenet(tmp_path / "imagenet")
    sets = [f"data.root={root}", "data.image_size=32", "data.eval_batch_size=4"]
    sets += ["precision=bf16", "channels_last=true"]
    ckpt = checkpoint("imagenet_gated_resnet18", sets, tmp_path / "run" / "last.pt", 3, CLASSES)
    out = tmp_path / "report"
    analyze_checkpoint(ckpt, out, make_plots=False)
    a = json.loads((out / "analysis.json").read_text())
    ev = evaluate_checkpoint(ckpt)
    assert a["precision"] == "bfloat16" and "Evaluated in bfloat16" in (out / "report.md").read_text()
    assert a["top1"] == ev["top1"] and a["macs"]["mean"] == ev["macs_mean"]
    assert a["gates"]["layers"][0]["counts"]["conditional"] > 0  # the planted gates depend on the image
