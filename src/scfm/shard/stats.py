"""Per-gene corpus statistics, streamed: nonzero medians (for ``rank``) and means."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.io.h5ad import MatrixReader, read_dataframe
from scfm.shard.corpus import select_cells
from scfm.spec import default
from scfm.tokenize import kernels
from scfm.tokenize.vocab import Vocab

# log2 of normalised counts, binned at 1/64: medians are exact to within ~0.5%, the way
# Geneformer's t-digest medians are approximate; memory is genes x 1536 int32 (~180 MB at 30k).
LOG2_LO, LOG2_HI, PER_UNIT = -10.0, 14.0, 64


def gene_stats(
    datasets: Mapping[str, str | Path],
    vocab: Vocab,
    out: str | Path,
    *,
    filters: Mapping[str, Any] | None = None,
    target_sum: float = 1e4,
    chunk_cells: int = default("io.chunk_cells"),
) -> pd.DataFrame:
    """Write ``gene_stats.tsv`` with per-gene statistics of the corpus' cells (after filters).

    Per vocabulary gene: cells expressing it, and the nonzero median and the mean of
    ``count / total * target_sum``.
    """
    n_tok = len(vocab)
    n_bins = int((LOG2_HI - LOG2_LO) * PER_UNIT)
    hist = np.zeros((n_tok, n_bins), np.int32)
    sums = np.zeros(n_tok, np.float64)
    n_cells = 0
    for name, path in datasets.items():
        obs = read_dataframe(path, "obs")
        keep = select_cells(obs, (filters or {}).get(name), path=path)
        col_token = vocab.map_genes(read_dataframe(path, "var").index)
        with MatrixReader(path) as reader:
            for row0, block in reader.iter_chunks(chunk_cells):
                sel = keep[row0 : row0 + block.shape[0]]
                if not sel.all():
                    block = block[sel]
                kernels.accumulate_log_hist(
                    block.indptr.astype(np.int64),
                    block.indices,
                    block.data,
                    col_token,
                    target_sum,
                    LOG2_LO,
                    float(PER_UNIT),
                    hist,
                    sums,
                )
                n_cells += block.shape[0]
    expressed = hist.sum(axis=1)
    median = kernels.hist_medians(hist, LOG2_LO, float(PER_UNIT))
    table = pd.DataFrame(
        {
            "token_id": np.arange(n_tok),
            "token": vocab.tokens,
            "n_cells_expressed": expressed,
            "nonzero_median": median,
            "mean": sums / max(n_cells, 1),
        }
    ).iloc[vocab.n_special :]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def inverse_medians(stats_path: str | Path, n_vocab: int) -> np.ndarray:
    """``1 / nonzero_median`` per token id (1 for specials and never-expressed genes)."""
    table = pd.read_csv(stats_path, sep="\t")
    inv = np.ones(n_vocab, np.float64)
    med = table["nonzero_median"].to_numpy()
    ok = np.isfinite(med) & (med > 0)
    inv[table["token_id"].to_numpy()[ok]] = 1.0 / med[ok]
    return inv
