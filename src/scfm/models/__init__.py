"""Models (transformer encoder, panel MLP/VAE), their objectives and FLOP accounting.

``build_model(cfg)`` returns a plain ``nn.Module`` whose ``forward(batch)`` returns a dict with
``token_states`` ([B, L, D] or None), ``position_states`` ([B, L, D], what objective heads
read), ``cell_embedding`` ([B, E]) and, for the VAE, ``kl``; and whose
``flops_per_token(seq_len)`` gives forward FLOPs for MFU.
"""

from torch import nn

from scfm.models.baseline import PanelModel
from scfm.models.config import PRESETS, ModelConfig
from scfm.models.flops import (
    PEAK_FLOPS_BF16,
    mfu,
    peak_flops_for_device,
    transformer_flops_per_token,
)
from scfm.models.heads import (
    OBJECTIVES,
    Objective,
    ObjectiveResult,
    ValueStats,
    build_objectives,
    trivial_losses,
)
from scfm.models.transformer import CellTransformer


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model ``cfg.kind`` names: :class:`CellTransformer` or :class:`PanelModel`."""
    return CellTransformer(cfg) if cfg.kind == "transformer" else PanelModel(cfg)


__all__ = [
    "OBJECTIVES",
    "PEAK_FLOPS_BF16",
    "PRESETS",
    "CellTransformer",
    "ModelConfig",
    "Objective",
    "ObjectiveResult",
    "PanelModel",
    "ValueStats",
    "build_model",
    "build_objectives",
    "mfu",
    "peak_flops_for_device",
    "transformer_flops_per_token",
    "trivial_losses",
]
