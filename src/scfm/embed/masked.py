"""Masked-prediction evaluation: a trained model's own pretraining objectives on new data.

The cells are tokenized and collated as in training and masked with the run's
``mask_ratio`` (batch ``k`` with ``numpy.random.default_rng([seed, k])``); the losses are
computed by the trainer's validation code (:func:`scfm.train.net.evaluate_batches`), so a
row here means what a val row of the run's ``metrics.tsv`` means.

Trivial predictors need value statistics. Training takes them from its train split; a
``model.pt`` carries them only if it has a ``value_stats`` entry (the fields of
:class:`scfm.models.ValueStats`, arrays as tensors), which training writes since issue 5.
Without it (older files) they are fitted on the evaluated cells themselves (``trivial_stats``
= "eval"): in-sample, so those predictors are, if anything, stronger than training's; their
columns get the suffix ``_evalfit`` (``trivial_uniform`` needs no statistics and keeps its name).

Contrastive objectives are evaluated like in training: two random gene subsets of each cell
(torch RNG seeded with ``seed``, restored afterwards); their loss and ``trivial_uniform``
(ln B) depend on ``batch_size``. VAEs add their "kl" row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from scfm.embed.cells import CellStream
from scfm.embed.embed import autocast, resolve_device
from scfm.embed.model_file import EXPECTED, ModelFile, open_model_file
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.models import ValueStats
from scfm.train.config import RunConfig
from scfm.train.distributed import DistEnv
from scfm.train.net import PretrainingNet, build_objectives, evaluate_batches

log = logging.getLogger("scfm.embed")

_NOTES = {
    "mse": "masked positions",
    "ce": "masked positions",
    "ordinal": "masked positions",
    "contrastive": "two random gene-subset views per cell; depends on batch_size (ln B)",
    "kl": "VAE KL per gene position; no trivial predictor",
    "total": "training's weighted sum of the objectives",
}


def masked_prediction(
    adata: Any,
    model_file: str | Path,
    *,
    batch_size: int = 256,
    max_cells: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk_cells: int = 20000,
    gene_stats: str | Path | None = None,
) -> pd.DataFrame:
    """Loss of each pretraining objective of the model on ``adata``, next to trivial predictors.

    Parameters
    ----------
    adata
        Raw integer counts in ``X``, gene IDs in ``var_names`` (may be backed).
    model_file
        A ``model.pt`` written by training (its ``run_config`` names the objectives).
    batch_size
        Cells per batch (contrastive losses depend on it, as in training).
    max_cells
        Evaluate a seeded random subset of this many cells (all when None).
    seed
        Seeds the subset, the masks and the contrastive views.
    device, chunk_cells, gene_stats
        As in :func:`scfm.embed.embed_anndata`.

    Returns
    -------
    pandas.DataFrame
        One row per objective plus "total": ``objective``, ``loss`` (mean over ``n`` masked
        positions, or cells for contrastive), ``n``, the trivial predictors' losses
        (``trivial_*`` as in ``metrics.tsv``; ``*_acc`` are accuracies), ``n_cells``,
        ``n_tokens`` (gene tokens of the evaluated cells), ``trivial_stats`` ("train" or
        "eval", see the module docstring) and ``note``.
    """
    model = open_model_file(model_file, gene_stats=gene_stats)
    run = _run_config(model)
    dev = resolve_device(device)
    path = str(adata.filename) if getattr(adata, "isbacked", False) else "<AnnData>"
    rows = _sample_rows(adata.n_obs, max_cells, seed)
    if len(rows) == 0:
        raise ScfmInputError(path, "obs", "no cells", "at least one cell to evaluate")
    net = PretrainingNet(model.build(dev), _objectives(model, run)).to(dev).eval()

    def stream() -> CellStream:
        return CellStream(adata, model, chunk_cells=chunk_cells, rows=rows, path=path)

    stats, source = _stats_from_file(model)
    if stats is None:
        stats = ValueStats.from_batches(stream().batches(batch_size), model.config)
    counts = {"n_cells": 0, "n_tokens": 0}
    evaluated = stream()
    batches = _counted(evaluated.batches(batch_size, mask_ratio=run.mask_ratio, seed=seed), counts)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        result = evaluate_batches(net, batches, stats, env, autocast(dev))
    evaluated.warn_missing()
    table = _table(result, list(net.objectives), counts, source)
    losses = dict(zip(table["objective"], table["loss"].round(4), strict=True))
    log.info("%s: masked prediction on %d cells: %s", path, counts["n_cells"], losses)
    return table


def _run_config(model: ModelFile) -> RunConfig:
    if not model.run_config:
        raise ScfmInputError(model.path, "run_config", "missing", EXPECTED)
    try:
        return RunConfig.from_dict(model.run_config)
    except ScfmConfigError as e:
        raise ScfmInputError(model.path, "run_config", f"invalid ({e})", EXPECTED) from None


def _objectives(model: ModelFile, run: RunConfig) -> nn.ModuleDict:
    objectives = build_objectives(run, model.config)
    heads = model.payload.get("heads")
    if heads is None:
        raise ScfmInputError(model.path, "heads", "missing", f"{EXPECTED}, with objective heads")
    try:
        objectives.load_state_dict(heads)
    except RuntimeError as e:
        raise ScfmInputError(
            model.path, "heads", f"do not fit the run's objectives ({e})", EXPECTED
        ) from None
    return objectives


def _sample_rows(n_obs: int, max_cells: int | None, seed: int) -> np.ndarray:
    if max_cells is not None and (not isinstance(max_cells, int) or max_cells < 1):
        raise ValueError(f"max_cells must be None or an integer >= 1, got {max_cells!r}")
    if max_cells is None or max_cells >= n_obs:
        return np.arange(n_obs)
    rng = np.random.default_rng([seed, 0x5E1EC7])
    return np.sort(rng.choice(n_obs, size=max_cells, replace=False))


def _stats_from_file(model: ModelFile) -> tuple[ValueStats | None, str]:
    """Training's value statistics if ``model.pt`` has them, else ``(None, "eval")``."""
    raw = model.payload.get("value_stats")
    if raw is None:
        return None, "eval"
    try:
        stats = ValueStats.from_payload(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise ScfmInputError(model.path, "value_stats", f"malformed ({e})", EXPECTED) from None
    if stats.value_kind != model.config.value_kind or stats.vocab_size != model.config.vocab_size:
        raise ScfmInputError(
            model.path, "value_stats", "for another vocabulary or value kind", EXPECTED
        )
    return stats, "train"


def _counted(batches: Iterator[dict[str, Any]], counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        counts["n_cells"] += len(batch["genes"])
        counts["n_tokens"] += int((~batch["padding_mask"][:, 1:]).sum())
        yield batch


def _table(
    result: dict[str, dict], order: list[str], counts: dict[str, int], source: str
) -> pd.DataFrame:
    records = []
    for name in [*order, "total"]:
        values = dict(result.get(name, {"loss": float("nan"), "n": 0}))
        if source == "eval":
            values = {
                f"{k}_evalfit" if k.startswith("trivial_") and k != "trivial_uniform" else k: v
                for k, v in values.items()
            }
        records.append({"objective": name, **values})
    table = pd.DataFrame.from_records(records)
    trivial = sorted(c for c in table.columns if c.startswith("trivial_"))
    table = table.reindex(columns=["objective", "loss", "n", *trivial])
    table["n"] = table["n"].astype("Int64")
    table["n_cells"] = counts["n_cells"]
    table["n_tokens"] = counts["n_tokens"]
    table["trivial_stats"] = source
    table["note"] = [_NOTES.get(o, "") for o in table["objective"]]
    return table
