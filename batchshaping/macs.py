"""Exact dense and per-sample conditional MAC (multiply-accumulate) counts.

Every ``nn.Conv2d`` and ``nn.Linear`` is counted, the gating modules' own layers included; BatchNorm,
ReLU, pooling and additions are not (the usual convention, e.g. He et al.'s FLOP counts).

A conv with C_in input channels, G groups, a k_h x k_w kernel and an output of C_out x H_out x W_out costs
C_out * H_out * W_out * (C_in / G) * k_h * k_w MACs per image. A closed gate removes its channel's share of
the convs it touches: in a BasicBlock, one output channel of conv1 and one input channel of conv2; in a
Bottleneck, conv2 costs (open inputs) * (open outputs) * k^2 * H * W, so the count is exact per image, not a
linear approximation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from batchshaping.gates import ChannelGate, GateOutput, gate_outputs, unwrap


def _layer_macs(module: nn.Module, out: Tensor) -> int:
    """MACs of one image through ``module`` given its batched output ``out``."""
    per_image = out[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    return per_image * module.in_features  # nn.Linear: out_features * in_features per row


def _check_gated_blocks(net: nn.Module, blocks: dict[str, tuple[str, nn.Module]]) -> None:
    """A gated block of any network is counted through two things: its ``gate`` attribute (the
    ChannelGate) and its ``gated_convs(mask)``; ValueError naming what is missing."""
    for n, m in net.named_modules():
        if isinstance(m, ChannelGate) and n not in blocks:
            raise ValueError(
                f"gating module {n!r} must be the attribute 'gate' of the block whose convs it switches "
                "(MAC counting finds the block by it)"
            )
    for prefix, block in blocks.values():
        if not callable(getattr(block, "gated_convs", None)):
            raise ValueError(
                f"block {prefix or type(block).__name__!r} has a gate but no gated_convs(mask) method: "
                "define it to return {conv attribute: (open input fraction, open output fraction)}, (N,) "
                "each, for the convs its gate switches (as batchshaping.models.blocks.BasicBlock does)"
            )


class MacCounter:
    """Per-layer dense MACs of ``model`` at ``input_shape`` (C, H, W), and conditional counts from gates.

    Attributes:
        layers: {module name: dense MACs per image} for every conv and linear layer.
        dense: MACs of the network without its gating modules (what the dense twin costs).
        gate_macs: MACs of the gating modules themselves.
        output_shape: the network's output for one image without the batch dimension, e.g. (10,).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        net = unwrap(model)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        self.layers: dict[str, int] = {}
        hooks = []
        for name, m in net.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                hooks.append(m.register_forward_hook(self._hook(name)))
        param = next(net.parameters())
        was_training = net.training
        try:
            net.eval()
            with torch.no_grad():
                out = net(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
        except RuntimeError as e:  # e.g. 1-channel images into a 3-channel stem
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{type(net).__name__} does not take images of shape {tuple(input_shape)} (C, H, W): {first}"
            ) from e
        finally:
            net.train(was_training)
            for h in hooks:
                h.remove()
        gate_prefixes = tuple(f"{n}." for n, m in net.named_modules() if isinstance(m, ChannelGate))
        self.gate_macs = sum(v for k, v in self.layers.items() if k.startswith(gate_prefixes))
        self.dense = sum(self.layers.values()) - self.gate_macs
        #: Shape of the network's output for one image, e.g. (num_classes,) or (num_classes, H, W).
        self.output_shape: tuple[int, ...] = tuple(out.shape[1:]) if isinstance(out, Tensor) else ()
        # Which block each gate drives: "layer1.0.gate" -> ("layer1.0", block).
        self._blocks = {
            f"{n}.gate" if n else "gate": (n, m)
            for n, m in net.named_modules()
            if isinstance(getattr(m, "gate", None), ChannelGate)
        }
        _check_gated_blocks(net, self._blocks)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            self.layers[name] = _layer_macs(module, out)

        return hook

    def conditional(self, outputs: Sequence[GateOutput], expected: bool = False) -> Tensor:
        """Per-image MACs (N,) for the gates in ``outputs`` (from :func:`gate_outputs`).

        ``expected=False``: the realised gates (``mask``); ``True``: the expected MACs under the gate-on
        probabilities (``probs``), exact for independent gates, and differentiable without the
        straight-through estimate. Without outputs (a dense model) the dense count is a 0-d tensor.
        """
        total: Tensor | float = float(self.dense + self.gate_macs)
        for out in outputs:
            prefix, block = self._block(out.name)
            # Realised counts in float64: float32 would round a 40M count by a few MACs.
            gates = (out.probs if expected else out.mask).double()
            for conv, (f_in, f_out) in block.gated_convs(gates).items():
                dense = self.layers[f"{prefix}.{conv}" if prefix else conv]
                total = total - dense + dense * f_in * f_out
        return torch.tensor(total, dtype=torch.float64) if isinstance(total, float) else total

    def gate_costs(self) -> list[Tensor]:
        """Per-channel cost of each gating module, (G_k,) each: MACs one open channel adds to its block
        when all others are open (d expected MACs / d prob). For MAC-weighted L0."""
        costs = []
        for prefix, block in self._blocks.values():
            g = block.gate.num_gates
            probe = torch.ones(1, g, requires_grad=True)
            macs = 0.0
            for conv, (f_in, f_out) in block.gated_convs(probe).items():
                macs = macs + self.layers[f"{prefix}.{conv}" if prefix else conv] * f_in * f_out
            (grad,) = torch.autograd.grad(macs.sum(), probe)
            costs.append(grad[0].detach())
        return costs

    def _block(self, gate_name: str) -> tuple[str, nn.Module]:
        if gate_name not in self._blocks:
            raise KeyError(f"gate {gate_name!r} is not part of the model this MacCounter was built for")
        return self._blocks[gate_name]


def dense_macs(model: nn.Module, input_shape: Sequence[int], include_gates: bool = False) -> int:
    """MACs per image of ``model`` at ``input_shape`` (C, H, W) with every channel running.

    For a gated model, ``include_gates=False`` (default) gives the cost of its dense twin; ``True`` adds the
    gating modules' own MACs (= the gated model's cost with every gate open).
    """
    c = MacCounter(model, input_shape)
    return c.dense + (c.gate_macs if include_gates else 0)


@torch.no_grad()
def conditional_macs(model: nn.Module, x: Tensor) -> Tensor:
    """Per-image MACs (N,) of ``model`` on the batch ``x`` (N, C, H, W), for the gates realised on it.

    Runs one forward pass in the model's current mode (evaluation gates are deterministic), and counts
    the gating modules' own MACs. A dense model gives its dense count for every image.
    """
    if x.dim() != 4:
        raise ValueError(f"conditional_macs takes a batch x (N, C, H, W), got shape {tuple(x.shape)}")
    counter = MacCounter(model, x.shape[1:])
    model(x)
    return counter.conditional(gate_outputs(model)).expand(x.shape[0]).clone()
