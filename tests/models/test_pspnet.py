"""PSPNet on a dilated (gated) ResNet-50: shapes, registry, dense equivalence and MAC counts."""

import pytest
import torch

import batchshaping as bs
from batchshaping.gates import force_gates, gate_outputs
from batchshaping.macs import MacCounter
from batchshaping.models.pspnet import PSPNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models() -> tuple[PSPNet, PSPNet]:
    torch.manual_seed(0)
    dense = bs.create_model("pspnet50").eval()
    gated = bs.create_model("gated_pspnet50").eval()
    missing, unexpected = gated.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and missing and all(".gate." in k for k in missing)
    return dense, gated


def test_registry_entries():
    for name, gated in (("pspnet50", False), ("gated_pspnet50", True)):
        info = bs.model_info(name)
        assert info.family == "segmentation" and info.gated is gated
        assert info.num_classes == 19 and info.input_size == (3, 512, 1024)


def test_logits_at_input_resolution_from_output_stride_8_features(models):
    dense, gated = models
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert dense.backbone.forward_features(x).shape == (1, 2048, 4, 6)
        assert dense(x).shape == (1, 19, 32, 48)
        force_gates(gated, 1.0)
        torch.testing.assert_close(gated(x), dense(x), rtol=0, atol=0)  # open gates = the dense network
        force_gates(gated, None)
    assert not hasattr(dense.backbone, "fc") and "backbone.layer4.2.conv3.weight" in dense.state_dict()


def test_mac_counter_counts_backbone_head_and_gates_per_image(models):
    dense, gated = models
    c_dense, c = MacCounter(dense, (3, 32, 32)), MacCounter(gated, (3, 32, 32))
    assert c.dense == c_dense.dense and c.gate_macs > 0
    f = 32 // 8  # 4 x 4 features at output stride 8
    for i, b in enumerate((1, 2, 3, 6)):
        assert c.layers[f"ppm.stages.{i}.1"] == b * b * 2048 * 512
    assert c.layers["head.0"] == f * f * 512 * 4096 * 9
    assert c.layers["head.4"] == f * f * 19 * 512
    # Dilation keeps layer4 at 4 x 4 (not 1 x 1): its 3x3 convs cost 4 * 4 * 512 * 512 * 9 each.
    assert c.layers["backbone.layer4.1.conv2"] == f * f * 512 * 512 * 9
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        force_gates(gated, 1.0)
        gated(x)
        open_macs = c.conditional(gate_outputs(gated))
        force_gates(gated, 0.0)
        gated(x)
        closed_macs = c.conditional(gate_outputs(gated))
        force_gates(gated, None)
        gated(x)
        macs = c.conditional(gate_outputs(gated))
    assert open_macs.shape == (2,) and (open_macs == c.dense + c.gate_macs).all()
    # All gates closed: every bottleneck's conv1/conv2 vanish, conv3 has no inputs; the rest remains.
    gated_convs = sum(v for k, v in c.layers.items() if k.startswith("backbone.layer") and ".conv" in k)
    assert (closed_macs == c.dense + c.gate_macs - gated_convs).all()
    assert ((closed_macs <= macs) & (macs <= open_macs)).all()
