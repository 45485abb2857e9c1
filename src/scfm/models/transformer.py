"""Pre-LN transformer encoder over a cell's (gene, value) tokens.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key-padding
mask of shape [B, 1, 1, L] (True = may attend): on GPU PyTorch picks its memory-efficient
kernel (flash kernels take no arbitrary mask), on CPU its fused CPU kernel, so no flash-attn
dependency. Pad positions are never attended to; their own outputs are garbage that pooling
and the objectives ignore. Nothing assumes a dtype, so the model runs in fp32 or under
``torch.autocast(dtype=torch.bfloat16)``.

Input embedding of position ``l`` of cell ``b``::

    gene_emb[genes] + value_emb(values) [+ pos_emb[l]] [+ sum_c cond_emb[conditions[b, c]]]

``value_emb`` is an ``Embedding(n_value_tokens + 1)`` for bin/count tokens (the last row is the
collator's mask value) or a 2-layer MLP of the float value, replaced by a learned mask vector
where ``batch["mask"]`` is set; there is none for value kind "none".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.models.config import ModelConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention via SDPA, one fused QKV projection (as nn.MultiheadAttention)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x`` [B, L, D]; ``attn_mask`` bool broadcastable to [B, H, L, L], True = attend."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """GELU MLP, or SwiGLU (Shazeer 2020) with the gate and up projections fused in one matmul."""

    def __init__(self, d_model: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.swiglu = activation == "swiglu"
        self.up = nn.Linear(d_model, 2 * hidden if self.swiglu else hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """[..., D] -> [..., D]."""
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.down(h)


class Block(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then ``x + ff(ln(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ff = FeedForward(cfg.d_model, cfg.ff_hidden, cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """[B, L, D] -> [B, L, D]."""
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.ff(self.norm2(x)))


class ConditionEmbedding(nn.Module):
    """Sum of learned embeddings of a cell's condition ids ([B] or [B, C]; negative = none)."""

    def __init__(self, n_conditions: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(n_conditions, dim)

    def forward(self, conditions: Tensor) -> Tensor:
        """[B] or [B, C] int -> [B, dim]."""
        ids = conditions.long().view(conditions.shape[0], -1)
        emb = self.table(ids.clamp(min=0)) * (ids >= 0).unsqueeze(-1).to(self.table.weight.dtype)
        return emb.sum(1)


class CellTransformer(nn.Module):
    """Transformer encoder of tokenized cells.

    ``forward(batch)`` reads ``genes``, ``padding_mask``, ``values`` (unless value kind "none"),
    ``mask`` (float values: where to use the mask vector) and optionally ``conditions``, and
    returns ``token_states`` [B, L, D] (after the final LayerNorm), ``position_states`` (the
    same tensor: what the objectives' heads read) and ``cell_embedding`` [B, D].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.kind != "transformer":
            raise ValueError(f"CellTransformer needs kind 'transformer', got {cfg.kind!r}")
        self.cfg = cfg
        d = cfg.d_model
        self.gene_embedding = nn.Embedding(cfg.vocab_size, d)
        self.value_embedding: nn.Module | None = None
        if cfg.value_kind in ("bin", "count"):
            assert cfg.n_value_tokens is not None
            self.value_embedding = nn.Embedding(cfg.n_value_tokens + 1, d)
        elif cfg.value_kind == "float":
            self.value_embedding = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
            self.mask_value = nn.Parameter(torch.zeros(d))
        self.position_embedding = nn.Embedding(cfg.n_positions, d) if cfg.use_positional else None
        self.conditions = ConditionEmbedding(cfg.n_conditions, d) if cfg.n_conditions else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.apply(_init_weights)
        # GPT-2: residual projections scaled so the residual stream's variance does not grow
        # with depth.
        for block in self.blocks:
            for proj in (block.attn.out, block.ff.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Input embeddings [B, L, D] (before dropout)."""
        genes = batch["genes"]
        x = self.gene_embedding(genes)
        kind = self.cfg.value_kind
        if kind in ("bin", "count"):
            x = x + self.value_embedding(batch["values"])  # type: ignore[misc]
        elif kind == "float":
            first = self.value_embedding[0]  # type: ignore[index]
            v = self.value_embedding(batch["values"].unsqueeze(-1).to(first.weight.dtype))  # type: ignore[misc]
            mask = batch.get("mask")
            if mask is not None:
                v = torch.where(mask.unsqueeze(-1), self.mask_value.to(v.dtype), v)
            x = x + v
        if self.position_embedding is not None:
            x = x + self.position_embedding.weight[: genes.shape[1]]
        if self.conditions is not None and "conditions" in batch:
            x = x + self.conditions(batch["conditions"]).unsqueeze(1)
        return x

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Encode a batch (see the class docstring for keys)."""
        padding = batch["padding_mask"]
        x = self.drop(self.embed(batch))
        attn_mask = ~padding[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.norm(x)
        return {"token_states": x, "position_states": x, "cell_embedding": self.pool(x, padding)}

    def pool(self, states: Tensor, padding_mask: Tensor) -> Tensor:
        """Cell embedding: the ``<cls>`` state, or the mean over gene (non-pad, non-cls) states."""
        if self.cfg.pooling == "cls":
            return states[:, 0]
        keep = ~padding_mask
        keep[:, 0] = False
        w = keep.unsqueeze(-1).to(states.dtype)
        return (states * w).sum(1) / w.sum(1).clamp(min=1.0)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token at padded length ``seq_len`` (attention included)."""
        from scfm.models.flops import transformer_flops_per_token

        return transformer_flops_per_token(self.cfg, seq_len)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
