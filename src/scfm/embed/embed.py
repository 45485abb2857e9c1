"""Cell embeddings from a trained model: AnnData in, ``(n_cells, d)`` float32 out.

The input is tokenized with the model's own vocabulary and tokenizer (from ``model.pt``),
collated exactly as in training but without masking, and run through the model in eval mode
(fp32 on CPU, bf16 autocast on CUDA); the embedding is the model's ``cell_embedding`` (the
``<cls>`` state or mean of gene states for a transformer, the bottleneck for the MLP, the
posterior mean for the VAE). Streaming and determinism: :mod:`scfm.embed.cells`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from scfm.embed.cells import CellStream
from scfm.embed.model_file import ModelFile, open_model_file
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.io.embedding import write_embedding
from scfm.paths import check_input, check_outputs_not_inputs
from scfm.provenance import created, versions

log = logging.getLogger("scfm.embed")


def embed_anndata(
    adata: ad.AnnData,
    model_file: str | Path,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    chunk_cells: int = 20000,
    progress: bool = True,
    gene_stats: str | Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed every cell of ``adata`` with the model in ``model_file``.

    Parameters
    ----------
    adata
        Raw integer counts in ``X`` and gene IDs (as in the training corpus) in
        ``var_names``; may be backed (``anndata.read_h5ad(path, backed="r")``), it is read
        ``chunk_cells`` rows at a time.
    model_file
        A ``model.pt`` written by training.
    batch_size
        Cells per forward pass.
    device
        "cpu", "cuda", a ``torch.device``, or None: CUDA when available.
    chunk_cells
        Rows read and tokenized at a time (bounds memory; does not change the result).
    progress
        Show a progress bar (when stderr is a terminal).
    gene_stats
        The training corpus' ``gene_stats.tsv``; only ``rank`` tokenizers need it.

    Returns
    -------
    embedding, report
        ``(n_cells, d)`` float32 in the order of ``adata.obs_names``, and ``n_genes_missing``
        (expressed genes the vocabulary lacks), ``missing_count_fraction``, ``examples``,
        ``n_cells``, ``dim``, ``device``.

    Raises
    ------
    ScfmInputError
        Not an scfm model file; ``X`` not integer counts; too many counts on genes outside
        the vocabulary (more than the tokenizer's ``max_missing_fraction``, 50%).
    """
    model = open_model_file(model_file, gene_stats=gene_stats)
    path = str(adata.filename) if getattr(adata, "isbacked", False) else "<AnnData>"
    return _embed(adata, model, batch_size, resolve_device(device), chunk_cells, progress, path)


def embed_file(
    model_file: str | Path,
    input_h5ad: str | Path,
    output_h5ad: str | Path,
    *,
    key: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    chunk_cells: int = 20000,
    gene_stats: str | Path | None = None,
) -> dict[str, Any]:
    """Embed an h5ad file (read backed) and write the embedding to ``output_h5ad`` atomically.

    The output holds the input's ``obs`` (all columns, same ``obs_names`` in the same order),
    no genes (``n_obs x 0``; join it to the input by ``obs_names``), the embedding in
    ``obsm[key]`` and the provenance record (JSON) in ``uns["scfm"]["embed"]``.

    Parameters
    ----------
    model_file, input_h5ad, output_h5ad
        Paths.
    key
        The ``obsm`` key; default ``X_<run>``, ``<run>`` being the model file's directory
        name (``results/train/<run>/model.pt``).
    batch_size, device, chunk_cells, gene_stats
        As in :func:`embed_anndata`.

    Raises
    ------
    ScfmInputError
        As :func:`embed_anndata`; also when ``output_h5ad`` is (or resolves to) one of the
        input files, before anything is written.

    Returns
    -------
    dict
        The provenance record: model path, sha256, vocab_hash, step, run, input, output, key,
        n_cells, dim, device, the missing-gene report, scfm version, created; and ``seconds``
        (logged, not written into the file).
    """
    check_outputs_not_inputs(
        {"output": output_h5ad},
        {"input": input_h5ad, "model": model_file, "gene_stats": gene_stats},
    )
    model = open_model_file(model_file, gene_stats=gene_stats)
    key = key or f"X_{model.run_name}"
    check_key(key)
    dev = resolve_device(device)
    started = time.perf_counter()
    adata = _read_backed(Path(input_h5ad))
    try:
        emb, report = _embed(adata, model, batch_size, dev, chunk_cells, False, str(input_h5ad))
        obs = adata.obs.copy()
        if not obs.index.is_unique:  # the output joins the input by obs_names
            log.warning(
                "%s: %d duplicated obs_names, e.g. %s: the embedding's rows follow the input's "
                "order, but a join by obs_names is ambiguous for those cells",
                input_h5ad,
                int(obs.index.duplicated().sum()),
                [str(c) for c in obs.index[obs.index.duplicated()][:3]],
            )
    finally:
        adata.file.close()
    record = {
        "stage": "embed",
        "model": str(model.path),
        "model_sha256": model.sha256,
        "run": model.run_name,
        "vocab_hash": model.vocab.hash,
        "step": model.payload.get("step"),
        "tokenizer": model.payload["tokenizer"],
        "input": str(input_h5ad),
        "output": str(output_h5ad),
        "key": key,
        **report,
        "batch_size": batch_size,
        "precision": "bf16" if dev.type == "cuda" else "fp32",
        "created": created(),
        "versions": versions("torch", "anndata"),
    }
    write_embedding(output_h5ad, obs, key, emb, record, stage="embed")
    # the duration goes to the log and the returned record, not into the file (see
    # scfm.provenance: the file depends on its inputs only)
    record["seconds"] = round(time.perf_counter() - started, 3)
    log.info(
        "%s: %d cells x %d dims in obsm[%r] in %.1fs",
        output_h5ad,
        len(emb),
        emb.shape[1],
        key,
        record["seconds"],
    )
    return record


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": CUDA when available, else CPU; a requested CUDA must be available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ScfmConfigError([f"device: {device!r} ({e})"], source="embed options") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScfmConfigError(
            ["device: cuda requested, CUDA is unavailable"], source="embed options"
        )
    return dev


def check_key(key: str) -> None:
    """An ``obsm`` key must be a non-empty name without "/" (it becomes an HDF5 name)."""
    if not isinstance(key, str) or not key or "/" in key:
        raise ScfmConfigError(
            [f"key: {key!r} is not a non-empty name without '/'"], source="embed options"
        )


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA, nothing (fp32) elsewhere, as training's ``precision: auto``."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _embed(
    adata: Any,
    model: ModelFile,
    batch_size: int,
    device: torch.device,
    chunk_cells: int,
    progress: bool,
    path: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    stream = CellStream(adata, model, chunk_cells=chunk_cells, path=path)
    net = model.build(device)
    out = np.empty((stream.n_cells, model.config.embedding_dim), np.float32)
    done = 0
    with torch.inference_mode():
        for batch in stream.batches(batch_size, progress=progress):
            with autocast(device):
                emb = net(to_device(batch, device))["cell_embedding"]
            out[done : done + len(emb)] = emb.float().cpu().numpy()
            done += len(emb)
    bad = int((~np.isfinite(out).all(axis=1)).sum())
    if bad:
        raise ScfmInputError(
            model.path,
            "state_dict",
            f"non-finite embeddings for {bad} cells",
            "a model whose training converged (see its metrics.tsv)",
        )
    report = {
        **stream.report(),
        "n_cells": stream.n_cells,
        "dim": int(out.shape[1]),
        "device": str(device),
    }
    stream.warn_missing()
    log.info("%s: embedded %d cells (dim %d) on %s", path, len(out), out.shape[1], device)
    return out, report


def _read_backed(path: Path) -> ad.AnnData:
    check_input(path, "file", "an h5ad file")
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as e:  # h5py/anndata raise many types on a damaged or foreign file
        raise ScfmInputError(path, "file", f"not readable as h5ad ({e})", "an h5ad file") from None
