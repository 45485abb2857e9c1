"""Panel baselines: an MLP autoencoder and a VAE over a fixed gene panel.

Both read the same batches as the transformer and feed the same objectives.

Input. The batch's (genes, values) become a dense panel vector: column ``j`` holds the value of
panel gene ``j`` when the cell has it at an observed (non-pad, non-cls, unmasked) position,
else 0. Values enter as numbers: ``bin / n_value_tokens``, ``log1p(count)``, floats as they
are, 1 (presence) for value kind "none". Except for "none" (whose masked *genes* are
unknown) a second block of ``P`` columns flags the panel genes whose value is masked, so the
model can tell "masked" from "not expressed". Genes outside the panel are not read but can
still be predicted (below). The panel is gene ids ``[0, panel_size)`` (default: the whole
vocabulary; special tokens in that range are never filled) or the explicit ``panel_genes``.

Output. The encoder maps the panel to a cell embedding (the MLP's bottleneck, the VAE's
posterior mean ``mu``); the decoder maps it to a vector ``h`` [B, d_model]. Position ``l``
gets ``position_states = (1 + h) * gene_embedding[genes[:, l]]``: a linear head on it is
``(1 + h) . (w * e_g)``, i.e. a per-gene linear decoder with a per-gene bias, exactly what a
dense decoder over the panel computes, but defined for every vocabulary gene and for the
``<mask>`` token of value kind "none" (where it predicts the cell's masked-gene distribution).
``token_states`` is None.

VAE. The KL term is an output: ``outputs["kl_per_cell"]`` ([B], ``KL(N(mu, sigma^2) || N(0, I))``
summed over latent dimensions) and ``outputs["kl"]`` (its mean, for logs). The "kl"
objective of :mod:`scfm.models.heads` turns it into a loss, per gene position (see there),
and its weight is the beta of a beta-VAE. Choosing an objective over an ``aux_loss`` output
keeps the trainer ignorant of model kinds: it sums weighted objectives, and the KL shows up
in its logs like any other term. :func:`~scfm.models.heads.build_objectives` adds "kl" with
weight 1 for a VAE when the spec does not name it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from scfm.models.config import ModelConfig
from scfm.models.transformer import ConditionEmbedding, _init_weights


class PanelModel(nn.Module):
    """MLP autoencoder (``kind="mlp"``) or VAE (``kind="vae"``) over a fixed gene panel."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.kind not in ("mlp", "vae"):
            raise ValueError(f"PanelModel needs kind 'mlp' or 'vae', got {cfg.kind!r}")
        self.cfg = cfg
        ids = cfg.panel_genes or tuple(range(cfg.panel_size or cfg.vocab_size))
        self.n_panel = len(ids)
        column = torch.full((cfg.vocab_size,), self.n_panel, dtype=torch.long)  # n_panel = drop
        column[torch.tensor(ids, dtype=torch.long)] = torch.arange(self.n_panel)
        self.register_buffer("column_of", column, persistent=False)
        self.flag_masked = cfg.value_kind != "none"
        self.n_inputs = self.n_panel * (2 if self.flag_masked else 1)
        h, z = cfg.hidden, cfg.latent_dim
        self.encoder_in = nn.Linear(self.n_inputs, h)
        self.encoder = nn.Sequential(
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(h, h),
            nn.GELU(),
            nn.Linear(h, 2 * z if cfg.kind == "vae" else z),
        )
        self.decoder_in = nn.Linear(z, h)
        self.decoder = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, cfg.d_model))
        self.gene_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder_conditions = self.decoder_conditions = None
        if cfg.n_conditions:
            self.encoder_conditions = ConditionEmbedding(cfg.n_conditions, h)
            self.decoder_conditions = ConditionEmbedding(cfg.n_conditions, h)
        self.apply(_init_weights)

    def panel(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Dense panel input [B, n_inputs] (float32) from the batch's tokens."""
        genes, padding = batch["genes"], batch["padding_mask"]
        b = genes.shape[0]
        mask = batch.get("mask")
        observed = ~padding
        observed[:, 0] = False  # <cls>
        masked = observed & mask if mask is not None else None
        if mask is not None:
            observed &= ~mask
        column = self.column_of[genes]
        in_panel = column < self.n_panel
        drop = self.n_inputs  # one spare column collects pads, cls, masked and non-panel genes
        out = torch.zeros(b, self.n_inputs + 1, device=genes.device)
        seen = observed & in_panel
        out.scatter_(1, torch.where(seen, column, drop), self._numeric(batch).float() * seen)
        if self.flag_masked and masked is not None:
            flagged = masked & in_panel
            out.scatter_(1, torch.where(flagged, column + self.n_panel, drop), flagged.float())
        return out[:, :drop]

    def _numeric(self, batch: Mapping[str, Tensor]) -> Tensor:
        kind = self.cfg.value_kind
        if kind == "none":
            return torch.ones_like(batch["genes"], dtype=torch.float32)
        v = batch["values"].float()
        if kind == "bin":
            return v / self.cfg.n_value_tokens
        return torch.log1p(v.clamp(min=0)) if kind == "count" else v

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
        """``cell_embedding`` [B, latent_dim], ``position_states`` [B, L, d_model] (+ VAE terms)."""
        x = self.panel(batch).to(self.encoder_in.weight.dtype)
        h = self.encoder_in(x)
        cond = batch.get("conditions")
        if self.encoder_conditions is not None and cond is not None:
            h = h + self.encoder_conditions(cond)
        out: dict[str, Tensor | None] = {"token_states": None}
        code = self.encoder(h)
        if self.cfg.kind == "vae":
            mu, logvar = code.float().chunk(2, dim=-1)
            logvar = logvar.clamp(-10.0, 10.0)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)
            out.update(mu=mu, logvar=logvar, kl_per_cell=kl, kl=kl.mean())
            out["cell_embedding"] = mu
        else:
            z = out["cell_embedding"] = code
        d = self.decoder_in(z.to(self.decoder_in.weight.dtype))
        if self.decoder_conditions is not None and cond is not None:
            d = d + self.decoder_conditions(cond)
        cell = self.decoder(d)
        genes = self.gene_embedding(batch["genes"])
        out["position_states"] = (1.0 + cell.unsqueeze(1)) * genes
        return out

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per padded token (the per-cell matmuls spread over ``seq_len``)."""
        from scfm.models.flops import panel_flops_per_cell

        return panel_flops_per_cell(self.cfg, self.n_inputs) / seq_len
