"""compile_conditional: the channel-skipping network computes exactly what the masked gated model computes."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import batchshaping as bs
from batchshaping.gates import force_gates, gate_modules, gate_outputs
from batchshaping.inference import (
    BATCH_MODES,
    ConditionalBasicBlock,
    ConditionalBottleneck,
    compile_conditional,
    resolve_batch_mode,
)
from batchshaping.models.blocks import Bottleneck, GateConfig
from batchshaping.models.resnet import ResNet

CIFAR_TEST = Path("/work/shared/data/cifar10/cifar10_test.npz")
ATOL = 1e-4
MODES = [m for m in BATCH_MODES if m != "auto"]  # on CPU "auto" is "union"; the default calls test it


def compile_eager(model, **kwargs):
    """Eager conversion: the same code as the default TorchScript one, without its 1-2 s compile."""
    return compile_conditional(model, script=False, **kwargs)


def randomise_gates(model, seed=0, mu=0.0):
    """Image-dependent gates with a mix of open and closed: fc2 weight N(0, 0.5), bias mu + N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gate in gate_modules(model):
            gate.fc2.weight.normal_(0, 0.5, generator=gen)
            gate.fc2.bias.copy_(mu + torch.randn(gate.num_gates, generator=gen))
    return model


def make(name, seed=0):
    torch.manual_seed(seed)
    model = bs.create_model(name, num_classes=7).eval()
    # Non-trivial BatchNorm statistics, so that folding is actually exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return randomise_gates(model, seed)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine two OpenMP threads can be 10x slower, not faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def r20():
    return make("gated_resnet20")


@pytest.fixture(scope="module")
def r50():
    return make("gated_resnet50", seed=1)


def inputs(name, n=6, seed=0):
    size = 32 if name == "r20" else 64
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same(out, ref):
    assert (out - ref).abs().max().item() < ATOL
    assert torch.equal(out.argmax(1), ref.argmax(1))


def open_fraction(model, x):
    with torch.no_grad():
        model(x)
    return torch.cat([o.mask.flatten() for o in gate_outputs(model)]).mean().item()


@pytest.mark.parametrize("name", ["r20", "r50"])
def test_matches_masked_model_on_random_inputs(name, request):
    model = request.getfixturevalue(name)
    x = inputs(name)
    frac = open_fraction(model, x)
    assert 0.2 < frac < 0.8, frac  # a real mix of open and closed gates
    with torch.no_grad():
        ref = model(x)
    conditional = compile_eager(model)
    assert_same(conditional(x), ref)
    assert_same(torch.cat([conditional(x[i : i + 1]) for i in range(len(x))]), ref)


def test_compiled_gates_are_the_models_eval_gates(r20):
    x = inputs("r20")
    conditional = compile_eager(r20)
    conditional(x)
    with torch.no_grad():
        r20(x)
    ours = conditional.masks()
    theirs = {o.name.removesuffix(".gate"): o.mask.bool() for o in gate_outputs(r20)}
    assert list(ours) == list(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.skipif(not CIFAR_TEST.is_file(), reason="CIFAR-10 test npz not available")
def test_matches_masked_model_on_cifar_images(r20):
    with np.load(CIFAR_TEST) as f:
        img = torch.from_numpy(f["x_test"][:32]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.2470, 0.2435, 0.2616))
    x = (img - mean[:, None, None]) / std[:, None, None]
    frac = open_fraction(r20, x)
    assert 0.2 < frac < 0.8, frac
    with torch.no_grad():
        ref = r20(x)
    conditional = compile_eager(r20)
    assert_same(conditional(x), ref)
    assert_same(torch.cat([conditional(x[i : i + 1]) for i in range(len(x))]), ref)


@pytest.mark.parametrize("name", ["r20", "r50"])
@pytest.mark.parametrize("mode", MODES)
def test_batched_modes_agree_with_batch_one(name, mode, request):
    model = request.getfixturevalue(name)
    x = inputs(name, n=5, seed=1)
    conditional = compile_eager(model, batch_mode=mode)
    one = torch.cat([conditional(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(conditional(x), one, rtol=0, atol=ATOL)
    with torch.no_grad():
        assert_same(one, model(x))


@pytest.mark.parametrize("name", ["r20", "r50"])
def test_default_torchscript_matches_eager_and_masked_model(name, request):
    model = request.getfixturevalue(name)
    x = inputs(name, n=4, seed=2)
    scripted = compile_conditional(model)  # default: torch.jit.script
    assert scripted.scripted and isinstance(scripted.core, torch.jit.ScriptModule)
    eager = compile_eager(model)
    torch.testing.assert_close(scripted(x), eager(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(scripted(x[:1]), eager(x[:1]), rtol=0, atol=1e-6)
    with torch.no_grad():
        assert_same(scripted(x[1:2]), model(x[1:2]))
    scripted(x), eager(x)  # masks() reports the last call
    assert list(scripted.masks()) == list(eager.masks())
    for block, mask in scripted.masks().items():
        assert torch.equal(mask, eager.masks()[block]), block


@pytest.mark.parametrize(("name", "align"), [("r20", 4), ("r50", 1), ("r50", 16)])
def test_channel_alignment_pads_with_exact_zero_channels(name, align, request):
    model = request.getfixturevalue(name)
    x = inputs(name, n=3, seed=5)
    conditional = compile_eager(model, channel_align=align)
    with torch.no_grad():
        ref = model(x)
    assert_same(conditional(x), ref)
    assert_same(torch.cat([conditional(x[i : i + 1]) for i in range(len(x))]), ref)


@pytest.mark.parametrize("name", ["gated_resnet18", "gated_resnet50"])
@pytest.mark.parametrize("nhwc_min_pixels", [1, 8 * 8, 10**9])
def test_memory_layout_does_not_change_the_function(name, nhwc_min_pixels):
    """channels_last everywhere (1), in the first stages only (64: NCHW from 4x4 maps on, at 64x64 inputs, so
    layer3 switches layout) and nowhere; with a closed block and a block whose first conv is closed, in
    every batch mode and at batch 1."""
    model = make(name, seed=6)
    with torch.no_grad():
        model.layer2[0].gate.fc2.bias.fill_(-50.0)
        if name == "gated_resnet50":
            model.layer3[1].gate.fc2.bias[: model.layer3[1].width] = -50.0
    x = inputs("r50", n=4, seed=7)
    with torch.no_grad():
        ref = model(x)
    for mode in MODES:
        conditional = compile_eager(model, batch_mode=mode, nhwc_min_pixels=nhwc_min_pixels)
        assert_same(conditional(x), ref)
    assert_same(torch.cat([conditional(x[i : i + 1]) for i in range(len(x))]), ref)
    with torch.inference_mode():
        stem_out = conditional.core.stem_forward(x)
    assert stem_out.is_contiguous(memory_format=torch.channels_last) == (nhwc_min_pixels <= 64 * 64)


def test_bfloat16_model_runs_in_bfloat16(r50):
    """The fused add + ReLU kernel is fp32-only on CPU: other dtypes take the plain ops."""
    model = copy.deepcopy(r50).to(torch.bfloat16)
    x = inputs("r50", n=3, seed=8).to(torch.bfloat16)
    with torch.no_grad():
        ref = model(x).float()
    for mode in MODES:
        out = compile_eager(model, batch_mode=mode)(x)
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        # bf16 rounding differs between folded and unfolded BatchNorm and can flip a gate: a loose check.
        assert (out.float() - ref).abs().max().item() < 0.25 * ref.abs().max().item()


@pytest.mark.parametrize("name", ["gated_resnet20", "gated_resnet50"])
def test_all_gates_open_is_the_dense_function(name):
    gated = make(name, seed=3)
    with torch.no_grad():
        for _, gate in gate_modules(gated):
            gate.fc2.bias.fill_(50.0)  # open through the logits, not forced
    dense = bs.create_model(name.removeprefix("gated_"), num_classes=7).eval()
    dense.load_state_dict(gated.state_dict(), strict=False)
    x = inputs("r20" if "20" in name else "r50", n=3)
    conditional = compile_eager(gated)
    out = conditional(x)
    assert all(m.all() for m in conditional.masks().values())
    with torch.no_grad():
        assert_same(out, dense(x))
    assert_same(conditional(x[:1]), dense(x[:1]))


@pytest.mark.parametrize("name", ["r20", "r50"])
def test_closed_block_reduces_to_its_shortcut_plus_bias(name, request):
    model = copy.deepcopy(request.getfixturevalue(name))
    block = model.layer2[0]  # a downsampling block: option-A padding (CIFAR) / projection (ImageNet)
    with torch.no_grad():
        block.gate.fc2.bias.fill_(-50.0)
    x = inputs(name, n=3)
    conditional = compile_eager(model)
    with torch.no_grad():
        ref = model(x)
        # The block's input, and what it should reduce to: relu(last bn(0) + shortcut).
        h = model.relu(model.bn1(model.conv1(x)))
        h = model.layer1(model.maxpool(h) if name == "r50" else h)
        last_bn = block.bn3 if name == "r50" else block.bn2
        out_shape = block(h).shape
        expected = torch.relu(last_bn(torch.zeros(out_shape)) + block.downsample(h))
    cblock = conditional.core.blocks[len(model.layer1)]
    assert isinstance(cblock, ConditionalBasicBlock | ConditionalBottleneck)
    with torch.inference_mode():
        got = cblock(h)
        assert not cblock.last_mask.any()
        got1 = cblock(h[:1])
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(got1, expected[:1], rtol=0, atol=ATOL)
    assert_same(conditional(x), ref)
    assert_same(conditional(x[:1]), ref[:1])


def test_forced_closed_gates_match_masked_model(r20):
    model = copy.deepcopy(r20)
    force_gates(model, 0.0)
    x = inputs("r20", n=3)
    with torch.no_grad():
        ref = model(x)
    assert_same(compile_eager(model)(x), ref)


def test_bottleneck_with_conv1_closed_and_conv2_open(r50):
    """conv2 then sees only zeros: its open outputs are the constant relu(bias2), mapped by conv3."""
    model = copy.deepcopy(r50)
    width = model.layer3[1].width
    with torch.no_grad():
        for block in (model.layer3[1], model.layer4[0]):
            block.gate.fc2.bias[:width] = -50.0
    x = inputs("r50", n=4, seed=3)
    with torch.no_grad():
        ref = model(x)
    for mode in MODES:
        conditional = compile_eager(model, batch_mode=mode)
        assert_same(conditional(x), ref)
    assert_same(torch.cat([conditional(x[i : i + 1]) for i in range(len(x))]), ref)
    m = conditional.masks()["layer3.1"]
    assert not m[:, :width].any() and m[:, width:].any()


@pytest.mark.parametrize("name", ["r20", "r50"])
def test_union_and_masked_agree_on_handmade_masks(name, request):
    """Rows all closed, all open, and (Bottleneck) conv1-closed-only, in one batch."""
    model = request.getfixturevalue(name)
    conditional = compile_eager(model)
    cblock = conditional.core.blocks[1]
    width = cblock.conv1.weight.shape[0]
    c_in = cblock.conv1.weight.shape[1]
    g = cblock.gate.num_gates
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, c_in, 8, 8, generator=gen).relu()
    mask = torch.rand(5, g, generator=gen) > 0.5
    mask[0], mask[1] = False, True
    if isinstance(cblock, ConditionalBottleneck):
        mask[4, :width] = False
    sc = cblock.shortcut(x)
    with torch.inference_mode():
        ref = cblock.masked(x, sc.clone(), mask)
        union = cblock.subset(x, sc.clone(), mask.any(0), mask.float())
        single = torch.cat(
            [cblock.subset(x[i : i + 1], sc[i : i + 1].clone(), mask[i], None) for i in range(5)]
        )
    for got in (union, single):
        torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "build",
    [
        lambda: bs.create_model("gated_resnet20", num_classes=7, shortcut="B"),  # 1x1 projection shortcuts
        lambda: ResNet(
            Bottleneck, [1, 1, 1, 1], 7, GateConfig(), replace_stride_with_dilation=(False, True, True)
        ),
    ],
    ids=["cifar-projection-shortcut", "dilated-bottleneck"],
)
def test_other_layouts_match_masked_model(build):
    torch.manual_seed(0)
    model = randomise_gates(build().eval(), seed=6)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model(x)
    conditional = compile_eager(model)
    assert_same(conditional(x), ref)
    assert_same(torch.cat([conditional(x[i : i + 1]) for i in range(len(x))]), ref)


def test_auto_mode_policy():
    assert resolve_batch_mode("auto", torch.device("cpu")) == "union"
    # Off the CPU "auto" is "masked", at any batch size; explicit modes are kept.
    assert resolve_batch_mode("auto", torch.device("cuda")) == "masked"
    assert resolve_batch_mode("union", torch.device("cuda")) == "union"
    assert resolve_batch_mode("masked", torch.device("cpu")) == "masked"


def test_model_without_gates_is_folded_with_a_warning():
    torch.manual_seed(0)
    dense = bs.create_model("resnet20", num_classes=7).eval()
    with pytest.warns(UserWarning, match="no channel gates"):
        folded = compile_eager(dense)
    x = inputs("r20", n=3)
    with torch.no_grad():
        assert_same(folded(x), dense(x))
    assert folded.masks() == {}


def test_bad_arguments_and_training_are_rejected(r20):
    with pytest.raises(ValueError, match="batch_mode"):
        compile_eager(r20, batch_mode="fastest")
    with pytest.raises(ValueError, match=r"one of \('auto', 'union', 'masked'\), got 'group'"):
        compile_eager(r20, batch_mode="group")
    assert (
        compile_eager(r20).batch_mode == "union"
        and compile_eager(r20, batch_mode="masked").batch_mode == "masked"
    )
    with pytest.raises(ValueError, match="CifarResNet and ResNet"):
        compile_eager(torch.nn.Linear(3, 3))
    with pytest.raises(RuntimeError, match="inference-only"):
        compile_eager(r20).train()


@pytest.mark.parametrize(
    "x", [torch.rand(2, 1, 32, 32), torch.rand(3, 32, 32), torch.rand(2, 3, 32, 32, dtype=torch.bfloat16)]
)
def test_an_input_of_other_channels_rank_or_dtype_is_refused_by_name(r20, x):
    with pytest.raises(ValueError, match=r"takes \(N, 3, H, W\) torch.float32 images on cpu, got a \("):
        compile_eager(r20)(x)
