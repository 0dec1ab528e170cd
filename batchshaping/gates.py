"""Channel gating modules: global pooling -> tiny MLP -> one logit per gated channel.

A :class:`ChannelGate` looks at a residual block's input and decides, per image, which of the block's
channels run. Training uses the straight-through Gumbel (logistic-noise) sigmoid of the paper; evaluation
thresholds the logits.

After every forward pass each gate keeps the output of *that* pass only (it is overwritten by the next
one, so nothing accumulates); :func:`gate_outputs` collects them in network order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

#: Initial bias of the last gate layer. sigmoid(3) = 0.953, so about 95% of the gates start open and the
#: network first trains like its dense counterpart before the losses start closing channels.
GATE_BIAS_INIT = 3.0

#: Gate classes over a test set (the paper's definition): a gate open for more than ALWAYS_ON of the
#: images is "always on", for fewer than ALWAYS_OFF "always off", anything between is "conditional".
ALWAYS_ON, ALWAYS_OFF = 0.99, 0.01


class GateOutput(NamedTuple):
    """What one gating module produced in the last forward pass.

    name:  qualified module name, e.g. ``"layer1.0.gate"``.
    probs: (N, G) gate-on probabilities sigmoid(logits), float32, with autograd.
    mask:  (N, G) realised 0/1 gates (float32). In training its gradient is the straight-through one.
    """

    name: str
    probs: Tensor
    mask: Tensor


class _StraightThroughSigmoid(torch.autograd.Function):
    """Forward: hard 0/1 step of z. Backward: gradient of sigmoid(z / tau)."""

    @staticmethod
    def forward(ctx, z: Tensor, tau: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.tau = tau
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(z / ctx.tau)
        return grad * s * (1 - s) / ctx.tau, None


def straight_through_gate(logits: Tensor, tau: float = 2 / 3, noise: bool = True) -> Tensor:
    """Sample hard gates with the straight-through Gumbel sigmoid.

    logits: (N, G). Returns (N, G) of exact 0/1 values equal to 1[(logits + L) / tau > 0] with logistic
    noise L = log U - log(1 - U), U ~ Uniform(0, 1) (L = 0 when ``noise`` is False). The backward pass uses
    the gradient of sigmoid((logits + L) / tau). With noise, P(gate = 1) = sigmoid(logits) for any tau.
    """
    z = logits
    if noise:
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        z = logits + (torch.log(u) - torch.log1p(-u))
    return _StraightThroughSigmoid.apply(z, tau)


class ChannelGate(nn.Module):
    """Gating module of the paper.

    x: (N, C_in, H, W) -> mask (N, G) in {0, 1}. Internally:
    global average pool -> Linear(C_in, hidden, bias=False) -> BatchNorm1d(hidden) -> ReLU
    -> Linear(hidden, G) = logits.

    Args:
        in_channels: channels of the block input.
        num_gates: G, the number of gated channels.
        hidden: width of the MLP (16 in the paper).
        tau: temperature of the straight-through sigmoid (2/3 in the paper).
        noise: add logistic noise in training (the Gumbel trick). Without it training gates are
            deterministic 1[logits > 0] with the same straight-through gradient.
        bias_init: initial bias of the last layer (see :data:`GATE_BIAS_INIT`).
    """

    def __init__(
        self,
        in_channels: int,
        num_gates: int,
        hidden: int = 16,
        tau: float = 2 / 3,
        noise: bool = True,
        bias_init: float = GATE_BIAS_INIT,
    ) -> None:
        super().__init__()
        for name, n in (("in_channels", in_channels), ("num_gates", num_gates), ("hidden", hidden)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"ChannelGate {name} must be an int >= 1, got {n!r}")
        if tau <= 0:
            raise ValueError(f"gate temperature tau must be > 0, got {tau}")
        self.in_channels, self.num_gates, self.tau, self.noise = in_channels, num_gates, tau, noise
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_gates)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.constant_(self.fc2.bias, bias_init)
        # Output of the last forward pass only; overwritten each time (see module docstring).
        self.last: tuple[Tensor, Tensor] | None = None
        # Test/analysis hook: force every gate to this value (1.0 open, 0.0 closed) instead of deciding.
        self.force: float | None = None

    def logits(self, x: Tensor) -> Tensor:
        """x: (N, C_in, H, W) -> logits (N, G) in float32."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:  # shapes only: no host sync, compile-safe
            raise ValueError(
                f"ChannelGate({self.in_channels} -> {self.num_gates} gates) expects the (N, "
                f"{self.in_channels}, H, W) tensor it gates on, got shape {tuple(x.shape)}; build it with "
                "in_channels = the channels of that tensor (a block's input)"
            )
        h = self.fc1(x.mean((2, 3)))
        h = self.relu(self.bn(h))
        return self.fc2(h).float()

    def forward(self, x: Tensor) -> Tensor:
        logits = self.logits(x)
        probs = torch.sigmoid(logits)
        if self.force is not None:
            mask = torch.full_like(logits, float(self.force))
        elif self.training:
            mask = straight_through_gate(logits, self.tau, self.noise)
        else:
            mask = (logits > 0).float()
        self.last = (probs, mask)
        return mask

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.num_gates} gates, tau={self.tau:.4g}, noise={self.noise}"


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / torch.compile wrappers so module names are the plain ones."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def gate_modules(model: nn.Module) -> list[tuple[str, ChannelGate]]:
    """All gating modules of ``model`` with their qualified names, in network order."""
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, ChannelGate)]


def gate_outputs(model: nn.Module) -> list[GateOutput]:
    """Gate outputs of the last forward pass, one per gating module in network order.

    Raises RuntimeError if a gating module has not run yet. Returns [] for a model without gates.
    """
    out = []
    for name, gate in gate_modules(model):
        if gate.last is None:
            raise RuntimeError(
                f"gate {name!r} has no output yet: run a forward pass before gate_outputs(model)"
            )
        out.append(GateOutput(name, *gate.last))
    return out


def clear_gate_outputs(model: nn.Module) -> None:
    """Drop the stored outputs (and their autograd graphs) of every gate."""
    for _, gate in gate_modules(model):
        gate.last = None


def force_gates(model: nn.Module, value: float | None) -> None:
    """Force every gate of ``model`` open (1.0), closed (0.0), or back to normal operation (None)."""
    if value not in (None, 0.0, 1.0):
        raise ValueError(f"force_gates takes 1.0 (all open), 0.0 (all closed) or None: got {value!r}")
    for _, gate in gate_modules(model):
        gate.force = value
