"""Helpers for the embed tests: simulated counts and models exported as training exports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _simcorpus
import anndata as ad
import torch

from scfm.models import ModelConfig, build_model, build_objectives
from scfm.tokenize import Vocab
from scfm.train import export_model

N_CELLS, N_GENES = 96, 60
BINNED = {"kind": "binned", "n_bins": 7, "max_len": 24, "genes": "nonzero", "target_sum": 1e4}
RANK = {"kind": "rank", "max_len": 24, "genes": "nonzero", "target_sum": 1e4}


def simulated(n_cells: int = N_CELLS, n_genes: int = N_GENES) -> ad.AnnData:
    """The simulated dataset of the embed tests (see tests/_simcorpus.py)."""
    return _simcorpus.simulated(n_cells, n_genes)


def export_fresh(
    out: Path,
    vocab_path: Path,
    *,
    kind: str = "transformer",
    tokenizer: dict[str, Any] | None = None,
    objectives: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """An untrained model exported as training exports one; returns ``out/model.pt``."""
    tok = dict(tokenizer or BINNED)
    vocab = Vocab.read(vocab_path)
    value_kind = {"binned": "bin", "rank": "none", "continuous": "float"}[tok["kind"]]
    cfg = ModelConfig.from_dict(
        {
            "kind": kind,
            "vocab_size": len(vocab),
            "value_kind": value_kind,
            "n_value_tokens": tok.get("n_bins") if value_kind == "bin" else None,
            "max_len": tok["max_len"],
            "d_model": 32,
            "n_heads": 2,
            "n_layers": 1,
            "hidden": 32,
            "latent_dim": 8,
        }
    )
    spec = objectives or {"ordinal": 1.0}
    torch.manual_seed(seed)
    model = build_model(cfg)
    heads = torch.nn.ModuleDict({o.name: o for o in build_objectives(spec, cfg)})
    table = vocab.table
    run_config = {
        "objectives": {k: v if isinstance(v, dict) else {"weight": v} for k, v in spec.items()},
        "max_steps": 1,
    }
    if kind == "vae" and "kl" not in spec:
        run_config["objectives"]["kl"] = {"weight": 1.0}
    return export_model(
        out / "model.pt",
        state_dict=model.state_dict(),
        model_config=cfg.to_dict(),
        vocab={
            "token": table["token"].astype(str).tolist(),
            "kind": table["kind"].astype(str).tolist(),
            "gene_symbol": table["gene_symbol"].astype(str).tolist(),
        },
        tokenizer={"name": tok["kind"], **tok},
        vocab_hash=vocab.hash,
        extra={"heads": heads.state_dict(), "step": 0, "run_config": run_config, **(extra or {})},
    )
