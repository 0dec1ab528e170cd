"""batchshaping: conditional channel gated networks trained with batch-shaping (Bejnordi et al. 2020)."""

from batchshaping.checkpoint import load_model, load_pretrained
from batchshaping.gates import (
    ChannelGate,
    GateOutput,
    clear_gate_outputs,
    force_gates,
    gate_outputs,
)
from batchshaping.inference import compile_conditional
from batchshaping.losses import BatchShapingLoss, l0_loss
from batchshaping.macs import MacCounter, conditional_macs, dense_macs
from batchshaping.models import GateConfig, create_model, list_models, model_info
from batchshaping.priors import BetaPrior, NormalPrior, Prior, RelaxedBernoulliPrior, SymBetaPrior

__version__ = "0.1.0"

__all__ = [
    "BatchShapingLoss",
    "BetaPrior",
    "NormalPrior",
    "Prior",
    "RelaxedBernoulliPrior",
    "SymBetaPrior",
    "l0_loss",
    "ChannelGate",
    "GateConfig",
    "GateOutput",
    "MacCounter",
    "clear_gate_outputs",
    "compile_conditional",
    "conditional_macs",
    "create_model",
    "dense_macs",
    "force_gates",
    "gate_outputs",
    "list_models",
    "load_model",
    "load_pretrained",
    "model_info",
]
