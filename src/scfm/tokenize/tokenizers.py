"""Tokenizers: turn CSR counts into (gene tokens, values) per cell, vectorised and seeded.

Definitions (exact; tests check them against direct readings on hand-made inputs):

- ``binned`` (scGPT-style): among the cell's expressed vocabulary genes (m of them), a count x
  gets bin ``1 + min(B - 1, floor(B * less(x) / m))`` with ``B = n_bins - 1`` and ``less(x)`` the
  number of the cell's expressed values strictly below x. Ties share a bin (the lowest), so no
  random tie-breaking is needed; 0 is reserved for zero expression. Quantile bins are invariant
  to per-cell scaling and monotone transforms, so binning counts equals binning normalised or
  log-normalised values.
- ``rank`` (Geneformer-style): genes ordered by ``count / total * target_sum / median_g``
  descending (``median_g`` = the gene's median of nonzero normalised values over the corpus),
  ties by matrix column order; the first ``max_len`` kept; no values (the order is the signal).
- ``continuous``: ``log1p(count / total * target_sum)`` as float32.
- ``counts``: ``min(count, vocab_size - 1)``: the raw-count tokens of a published attempt whose
  cross-entropy training did not beat the uniform predictor; kept to reproduce that contrast.

``total`` is the cell's total count over all genes, also those outside the vocabulary.
Gene selection (not ``rank``): ``nonzero`` = all expressed genes, the highest counts when there
are more than ``max_len``; ``top_k`` = the ``top_k`` highest counts; ``random`` = a subset of
``max_len`` expressed genes drawn with a per-cell seed (from ``seed`` and the cell's position in
its dataset); ``panel`` = every vocabulary gene, zeros included, in vocabulary order. Apart from
``rank`` and ``panel``, selected genes keep the order of the source matrix's columns.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from scfm.errors import ScfmInputError
from scfm.rule_params import token_keys
from scfm.spec import check, default, max_len_problems
from scfm.tokenize import kernels
from scfm.tokenize.binary import tokenize_binary
from scfm.tokenize.vocab import Vocab

KINDS = {
    "binned": kernels.BINNED,
    "rank": kernels.RANK,
    "continuous": kernels.CONTINUOUS,
    "counts": kernels.COUNTS,
    "binary": -1,  # scfm.tokenize.binary (accessible / inaccessible features, e.g. scATAC)
}
MODES = {
    "nonzero": kernels.NONZERO,
    "top_k": kernels.TOP_K,
    "random": kernels.RANDOM,
    "panel": kernels.PANEL,
}
VALUE_KIND = {
    "binned": "bin",
    "counts": "count",
    "continuous": "float",
    "rank": "none",
    "binary": "bin",
}


@dataclass(frozen=True)
class TokenizerConfig:
    """One ``tokenizers.<name>`` block (see the config schema for each field)."""

    kind: str
    max_len: int = default("tokenizers.*.max_len")
    n_bins: int = default("tokenizers.*.n_bins")
    vocab_size: int = default("tokenizers.*.vocab_size")
    target_sum: float = default("tokenizers.*.target_sum")
    genes: str = default("tokenizers.*.genes")
    top_k: int = default("tokenizers.*.top_k")
    seed: int = default("tokenizers.*.seed")
    max_missing_fraction: float = default("tokenizers.*.max_missing_fraction")
    negatives: float = default("tokenizers.*.negatives")

    def __post_init__(self) -> None:
        # kinds, gene modes and bounds are the schema's (tokenizers.<t>); max_len with its unit
        problems = check("tokenizers.*", {k: v for k, v in asdict(self).items() if k != "max_len"})
        problems += max_len_problems(self.max_len)
        if self.kind == "binary" and self.genes != "nonzero":
            problems.append("genes: binary takes the accessible features; expected 'nonzero'")
        if self.kind == "rank" and self.genes != "nonzero":
            problems.append("genes: rank encoding orders the expressed genes; expected 'nonzero'")
        if problems:
            raise ValueError("tokenizer config: " + "; ".join(problems))

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> TokenizerConfig:
        """From a validated config block (unknown keys are rejected by the schema)."""
        return cls(**block)

    @property
    def value_kind(self) -> str:
        """``bin``, ``count``, ``float`` or ``none``."""
        return VALUE_KIND[self.kind]

    @property
    def n_value_tokens(self) -> int | None:
        """Number of distinct value tokens (bins or capped counts), else None."""
        return {"binned": self.n_bins, "counts": self.vocab_size, "binary": 2}.get(self.kind)

    def params(self) -> dict[str, Any]:
        """The parameters that define the tokens (recorded in manifests and models)."""
        return token_keys(asdict(self))


@dataclass
class Tokens:
    """Tokenized cells as flat arrays: cell i owns ``genes[offsets[i]:offsets[i + 1]]``."""

    offsets: np.ndarray  # int64, n_cells + 1
    genes: np.ndarray  # int32 token ids
    values: np.ndarray | None  # int16 (bin/count), float32 (float) or None (rank)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.offsets) - 1

    def slice(self, start: int, stop: int) -> Tokens:
        """Cells ``start:stop`` as views (no copy of the tokens)."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        values = None if self.values is None else self.values[lo:hi]
        return Tokens(
            offsets=self.offsets[start : stop + 1] - lo, genes=self.genes[lo:hi], values=values
        )


def cell_seeds(seed: int, dataset: str, rows: np.ndarray) -> np.ndarray:
    """Per-cell seeds from the tokenizer seed, the dataset name and each cell's row index."""
    base = np.uint64((seed * 0x9E3779B1 + zlib.crc32(dataset.encode())) & 0xFFFFFFFFFFFFFFFF)
    return (rows.astype(np.uint64) * np.uint64(0x100000001B3)) ^ base


def tokenize_csr(
    block: sp.csr_matrix,
    col_token: np.ndarray,
    cfg: TokenizerConfig,
    *,
    n_special: int,
    n_vocab: int,
    seeds: np.ndarray | None = None,
    inv_median: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    col_sums: np.ndarray | None = None,
) -> Tokens:
    """Tokenize a CSR block of raw counts (cells x dataset genes).

    Parameters
    ----------
    block
        Raw integer counts.
    col_token
        Token id of each column of ``block`` (``-1``: not in the vocabulary, ignored).
    cfg
        Tokenizer settings.
    n_special, n_vocab
        Number of special tokens and the vocabulary size.
    seeds
        Per-cell seeds (``genes: random``); see :func:`cell_seeds`.
    inv_median
        ``1 / median_g`` per token id (``rank``).
    rows
        Rows of ``block`` to tokenize, in output order (default: all, in order); per-cell
        ``seeds`` are indexed by row of ``block``.
    col_sums
        If given (float64, one per column), each column's counts over all rows are added to it.
    """
    block = sp.csr_matrix(block)
    rows = np.arange(block.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if seeds is None:
        seeds = cell_seeds(cfg.seed, "", np.arange(block.shape[0]))
    if cfg.kind == "binary":
        if col_sums is not None:
            col_sums += np.asarray(block[rows].sum(axis=0), dtype=np.float64).ravel()
        offsets, genes, values = tokenize_binary(
            block,
            col_token,
            max_len=cfg.max_len,
            negatives=cfg.negatives,
            n_special=n_special,
            n_vocab=n_vocab,
            seeds=seeds,
            rows=rows,
        )
        return Tokens(offsets=offsets, genes=genes, values=values)
    panel = n_vocab - n_special if cfg.genes == "panel" else 0
    if panel > cfg.max_len:
        raise ValueError(f"tokenizer genes: panel has {panel} genes > max_len {cfg.max_len}")
    limit = {"top_k": min(cfg.top_k, cfg.max_len)}.get(cfg.genes, cfg.max_len)
    per_row = np.diff(block.indptr)[rows]
    size = int(n * panel) if panel else int(np.minimum(per_row, limit).sum())
    offsets = np.empty(n + 1, np.int64)
    # one slot of slack: the kernel's branch-free selection may write one past a row's end
    genes = np.empty(size + 1, np.int32)
    # only the array of this kind's values is sized; the kernel never touches the other one
    ivals = np.empty(size + 1 if cfg.value_kind in ("bin", "count") else 0, np.int16)
    fvals = np.empty(size if cfg.value_kind == "float" else 0, np.float32)
    if inv_median is None:
        if cfg.kind == "rank":
            raise ValueError("rank tokenizer needs the corpus gene medians")
        inv_median = np.ones(1, np.float64)
    if col_sums is None:
        col_sums = np.zeros(block.shape[1], np.float64)
    # only rank and continuous use the cells' totals; the kernel sums them on its way when that
    # is exact (integer counts), which saves a pass over the chunk
    uses_totals = cfg.kind in ("rank", "continuous")
    exact_below = _exact_sum_bound(block.dtype) if uses_totals else 0.0
    if uses_totals and exact_below == 0:
        totals = _row_sums(block)
    else:
        totals = np.zeros(block.shape[0], np.float64)
    args = (
        block.indptr.astype(np.int64, copy=False),
        block.indices,
        block.data,
        np.ascontiguousarray(col_token, dtype=np.int32),
    )
    rest = (
        seeds.astype(np.uint64),
        KINDS[cfg.kind],
        MODES[cfg.genes],
        limit,
        cfg.n_bins,
        cfg.vocab_size - 1,
        float(cfg.target_sum),
        np.ascontiguousarray(inv_median, dtype=np.float64),
        panel,
        n_special,
        rows,
        offsets,
        genes,
        ivals,
        fvals,
    )
    sums = col_sums.copy() if exact_below > 0 else col_sums
    kernels.tokenize_rows(*args, totals, exact_below > 0, exact_below, *rest, sums)
    if exact_below > 0 and offsets[-1] < 0:  # non-integer or huge values: scipy's sums
        kernels.tokenize_rows(*args, _row_sums(block), False, 0.0, *rest, col_sums)
    elif sums is not col_sums:
        col_sums[:] = sums
    used = int(offsets[-1])
    values: np.ndarray | None
    if cfg.value_kind in ("bin", "count"):
        values = ivals[:used]
    elif cfg.value_kind == "float":
        values = fvals[:used]
    else:
        values = None
    return Tokens(offsets=offsets, genes=genes[:used], values=values)


def _row_sums(block: sp.csr_matrix) -> np.ndarray:
    """Each row's total as scipy sums it (in the data's dtype), as float64."""
    return np.asarray(block.sum(axis=1), dtype=np.float64).ravel()


def _exact_sum_bound(dtype: np.dtype) -> float:
    """The bound below which sums of integer values of ``dtype`` are exact in any order.

    Also in scipy's own ``sum``, which adds in the data's dtype; 0: the kernel should not sum.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return float(2 ** min(np.finfo(dtype).nmant + 1, 53))
    if dtype.kind in "iu":
        return float(min(np.iinfo(dtype).max, 2**53))
    return 0.0


def gene_coverage(block_counts_per_gene: np.ndarray, col_token: np.ndarray) -> tuple[float, int]:
    """Fraction of counts on genes outside the vocabulary, and how many such genes are expressed."""
    total = float(block_counts_per_gene.sum())
    missing = col_token < 0
    frac = float(block_counts_per_gene[missing].sum()) / total if total else 0.0
    return frac, int((missing & (block_counts_per_gene > 0)).sum())


def tokenize_anndata(
    adata: Any,
    vocab: Vocab,
    cfg: TokenizerConfig,
    *,
    dataset: str = "",
    inv_median: np.ndarray | None = None,
    path: str = "<AnnData>",
) -> tuple[Tokens, dict[str, Any]]:
    """Tokenize any AnnData (raw counts in X, gene IDs in var_names) with a saved vocab.

    Genes missing from the vocabulary are dropped and counted; when they carry more than
    ``cfg.max_missing_fraction`` of the counts the data cannot be represented: an error.

    Returns
    -------
    tokens, report
        The tokens and ``{"n_genes_missing", "missing_count_fraction", "examples"}``.
    """
    col_token = vocab.map_genes(adata.var_names)
    X = sp.csr_matrix(adata.X)
    per_gene = np.asarray(X.sum(axis=0)).ravel()
    frac, n_missing = gene_coverage(per_gene, col_token)
    report = {
        "n_genes_missing": n_missing,
        "missing_count_fraction": frac,
        "examples": [
            str(g) for g in np.asarray(adata.var_names)[(col_token < 0) & (per_gene > 0)][:10]
        ],
    }
    if frac > cfg.max_missing_fraction:
        raise ScfmInputError(
            path,
            "var_names",
            f"{frac:.0%} of the counts fall on {n_missing} genes missing from the vocabulary "
            f"(e.g. {report['examples'][:5]})",
            f"at most {cfg.max_missing_fraction:.0%} (tokenizers.<name>.max_missing_fraction); "
            "same organism and gene ID type as the corpus?",
        )
    seeds = cell_seeds(cfg.seed, dataset, np.arange(X.shape[0]))
    tokens = tokenize_csr(
        X,
        col_token,
        cfg,
        n_special=vocab.n_special,
        n_vocab=len(vocab),
        seeds=seeds,
        inv_median=inv_median,
    )
    return tokens, report
