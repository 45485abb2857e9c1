"""Cells of an AnnData streamed as model batches: read rows, check counts, tokenize, collate.

Memory is bounded by ``chunk_cells`` (rows read and tokenized at a time) and ``batch_size``;
a backed AnnData (``anndata.read_h5ad(path, backed="r")``) is never read whole. Batches are
cut from the stream of cells, not per chunk, so batch ``k`` always holds the same cells
whatever ``chunk_cells`` is: results do not depend on the chunk size.

Determinism. Tokenizers are deterministic except ``genes: random``, whose per-cell seed comes
from the tokenizer seed and the cell: here a hash of its ``obs_name`` (with the dataset name
""), so a cell's tokens do not depend on its row or on which file it is in.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from scfm.embed.model_file import ModelFile
from scfm.errors import ScfmInputError
from scfm.io.genes import check_unique_genes
from scfm.io.standardize import check_counts
from scfm.tokenize.tokenizers import Tokens, cell_seeds, gene_coverage, tokenize_csr

log = logging.getLogger("scfm.embed")

#: Dataset name in the per-cell tokenizer seeds (see the module docstring).
SEED_DATASET = ""


class CellStream:
    """Tokenized cells of ``adata`` for one model, with the missing-gene account.

    Parameters
    ----------
    adata
        Raw integer counts in ``X`` (cells x genes, any sparse or dense layout, in memory or
        backed), gene IDs in ``var_names``.
    model
        The opened model file (vocabulary and tokenizer).
    chunk_cells
        Rows read and tokenized at a time.
    rows
        Sorted row indices to use (default: all rows).
    path
        Names the input in errors.
    """

    def __init__(
        self,
        adata: Any,
        model: ModelFile,
        *,
        chunk_cells: int = 20000,
        rows: np.ndarray | None = None,
        path: str = "<AnnData>",
    ) -> None:
        if not isinstance(chunk_cells, int) or chunk_cells < 1:
            raise ValueError(f"chunk_cells must be an integer >= 1, got {chunk_cells!r}")
        if adata.X is None:
            raise ScfmInputError(path, "X", "missing", "raw integer counts in X")
        self.adata, self.model, self.path = adata, model, path
        self.chunk_cells = chunk_cells
        self.rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows, np.int64)
        # a duplicated gene would be tokenized twice (standardize refuses the same file)
        check_unique_genes(adata.var_names, path=path, where="var_names")
        self.col_token = model.vocab.map_genes(adata.var_names)
        self.col_sums = np.zeros(adata.n_vars, np.float64)
        if not (self.col_token >= 0).any():
            raise ScfmInputError(
                path,
                "var_names",
                f"none of the {adata.n_vars} genes is in the model's vocabulary "
                f"(e.g. {[str(g) for g in adata.var_names[:3]]})",
                f"gene IDs like the model's (e.g. {model.vocab.genes[:3]}); same organism "
                "and gene ID type as the training corpus",
            )

    @property
    def n_cells(self) -> int:
        """Cells in the stream."""
        return len(self.rows)

    def tokens(self, *, progress: bool = False) -> Iterator[Tokens]:
        """Tokens of each chunk of rows, in order; checks counts and gene coverage."""
        bar = tqdm(
            total=self.n_cells,
            unit="cells",
            desc=f"embed {self.model.run_name}",
            disable=not (progress and sys.stderr.isatty()),
        )
        try:
            for i, start in enumerate(range(0, self.n_cells, self.chunk_cells)):
                rows = self.rows[start : start + self.chunk_cells]
                tokens = self._tokenize(rows)
                if i == 0:  # fail early on the wrong kind of gene IDs
                    self._check_coverage("its first chunk of cells")
                yield tokens
                bar.update(len(rows))
        finally:
            bar.close()
        self._check_coverage("all cells")

    def batches(
        self, batch_size: int, *, mask_ratio: float = 0.0, seed: int = 0, progress: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Collated batches of ``batch_size`` cells (the last one smaller), as in training.

        With ``mask_ratio`` > 0, batch ``k`` is masked with ``default_rng([seed, k])``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        collator = self.model.collator(mask_ratio=mask_ratio)
        genes: list[np.ndarray] = []
        values: list[np.ndarray] = []
        k = 0
        for tokens in self.tokens(progress=progress):
            offsets = tokens.offsets.tolist()
            for a, b in itertools.pairwise(offsets):
                genes.append(tokens.genes[a:b])
                if tokens.values is not None:
                    values.append(tokens.values[a:b])
                if len(genes) == batch_size:
                    yield self._collate(collator, genes, values, seed, k)
                    genes, values, k = [], [], k + 1
        if genes:
            yield self._collate(collator, genes, values, seed, k)

    def report(self) -> dict[str, Any]:
        """Genes of the input missing from the vocabulary, over the cells read so far.

        ``n_genes_missing`` counts expressed genes (some count > 0) that the vocabulary lacks,
        ``missing_count_fraction`` the share of all counts on them, ``examples`` up to ten.
        """
        frac, n_missing = gene_coverage(self.col_sums, self.col_token)
        missing = (self.col_token < 0) & (self.col_sums > 0)
        return {
            "n_genes_missing": n_missing,
            "missing_count_fraction": frac,
            "examples": [str(g) for g in np.asarray(self.adata.var_names)[missing][:10]],
        }

    def warn_missing(self) -> None:
        """Log a warning (logger ``scfm.embed``) if expressed genes were not in the vocabulary."""
        report = self.report()
        if report["n_genes_missing"]:
            log.warning(
                "%s: %d expressed genes (%.2f%% of the counts) are not in the model's "
                "vocabulary and were ignored, e.g. %s",
                self.path,
                report["n_genes_missing"],
                100 * report["missing_count_fraction"],
                report["examples"][:5],
            )

    # ------------------------------------------------------------------ internals

    def _tokenize(self, rows: np.ndarray) -> Tokens:
        contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        X = self.adata.X
        try:
            raw = X[int(rows[0]) : int(rows[-1]) + 1] if contiguous else X[rows]
        except Exception as e:  # h5py / anndata errors on damaged files
            raise ScfmInputError(
                self.path, "X", f"rows cannot be read ({e})", "a complete, uncorrupted file"
            ) from None
        block = sp.csr_matrix(raw)
        names = self.adata.obs_names
        check_counts(
            block,
            path=self.path,  # type: ignore[arg-type]
            field="X",
            row0=int(rows[0]) if contiguous else 0,
            obs_names=names if contiguous else names[rows],
            var_names=self.adata.var_names,
        )
        cfg = self.model.tokenizer
        keys = pd.util.hash_array(np.asarray(names[rows], dtype=object))
        return tokenize_csr(
            block,
            self.col_token,
            cfg,
            n_special=self.model.vocab.n_special,
            n_vocab=len(self.model.vocab),
            seeds=cell_seeds(cfg.seed, SEED_DATASET, keys),
            inv_median=self.model.inv_median,
            col_sums=self.col_sums,
        )

    def _check_coverage(self, where: str) -> None:
        report = self.report()
        limit = self.model.tokenizer.max_missing_fraction
        if report["missing_count_fraction"] > limit:
            raise ScfmInputError(
                self.path,
                "var_names",
                f"in {where}, {report['missing_count_fraction']:.0%} of the counts fall on "
                f"{report['n_genes_missing']} genes missing from the model's vocabulary "
                f"(e.g. {report['examples'][:5]})",
                f"at most {limit:.0%}; same organism and gene ID type as the training corpus?",
            )

    @staticmethod
    def _collate(
        collator: Any, genes: list[np.ndarray], values: list[np.ndarray], seed: int, k: int
    ) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([seed, k]) if collator.mask_ratio > 0 else None
        return collator(genes, values or None, rng=rng)
