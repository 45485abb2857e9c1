"""The corpus vocabulary: special tokens, then genes; its content hash ties shards and models."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.io.h5ad import read_dataframe
from scfm.spec import default

PAD, CLS, MASK = "<pad>", "<cls>", "<mask>"
BASE_SPECIALS = [PAD, CLS, MASK, "<unk>", "<mod_rna>", "<mod_atac>"]


def special_tokens(n_condition_tokens: int = 32) -> list[str]:
    """Special tokens in id order.

    ``<pad>``=0, ``<cls>``=1, ``<mask>``=2, ``<unk>``, modality tokens, then reserved condition
    tokens ``<cond_0>``... for batch or other conditions.
    """
    return BASE_SPECIALS + [f"<cond_{i}>" for i in range(n_condition_tokens)]


def build_vocab(
    datasets: Mapping[str, str | Path],
    *,
    policy: str = default("corpora.*.vocab.policy"),
    min_cells: int = default("corpora.*.vocab.min_cells"),
    genes_file: str | Path | None = default("corpora.*.vocab.genes_file"),
    max_genes: int | None = default("corpora.*.vocab.max_genes"),
    n_condition_tokens: int = default("corpora.*.vocab.n_condition_tokens"),
) -> pd.DataFrame:
    """Vocabulary table from the ``var`` of QC'd datasets (reads no matrix).

    Genes are the union or intersection of the datasets' gene IDs, or the IDs listed in
    ``genes_file``; those detected in fewer than ``min_cells`` cells of the corpus (QC's
    ``var.n_cells`` summed) are dropped; ``max_genes`` keeps the most frequently detected.
    Genes are ordered by gene ID so that the same gene set always gives the same token ids.

    Returns
    -------
    pandas.DataFrame
        ``token_id``, ``token``, ``kind`` (``special``/``gene``), ``gene_symbol``, ``n_cells``.
    """
    n_cells: pd.Series | None = None
    symbols: dict[str, str] = {}
    seen: list[set[str]] = []
    for name, path in datasets.items():
        var = read_dataframe(path, "var")
        if "n_cells" not in var:
            raise ScfmInputError(path, "var/n_cells", "missing", f"a QC'd h5ad of dataset {name}")
        counts = var["n_cells"].astype(np.int64)
        n_cells = counts if n_cells is None else n_cells.add(counts, fill_value=0)
        symbols.update(zip(var.index.astype(str), var["gene_symbol"].astype(str), strict=False))
        seen.append(set(var.index.astype(str)))
    assert n_cells is not None
    if policy == "union":
        genes = set().union(*seen)
    elif policy == "intersection":
        genes = set.intersection(*seen)
    elif policy == "file":
        if genes_file is None:
            raise ValueError("vocab policy 'file' needs genes_file")
        listed = [g.strip() for g in Path(genes_file).read_text().splitlines() if g.strip()]
        genes = set(listed)
        unknown = genes - set().union(*seen)
        if len(unknown) == len(genes):
            raise ScfmInputError(
                genes_file,
                "genes",
                "none of the listed gene IDs is in the corpus",
                "gene IDs as in the datasets' var_names (e.g. Ensembl)",
            )
    else:
        raise ValueError(f"unknown vocab policy {policy!r}; expected union, intersection or file")
    freq = n_cells.reindex(sorted(genes)).fillna(0).astype(np.int64)
    freq = freq[freq >= min_cells]
    if max_genes is not None and len(freq) > max_genes:
        freq = freq.sort_values(ascending=False, kind="stable").iloc[:max_genes].sort_index()
    if freq.empty:
        raise ScfmInputError(
            next(iter(datasets.values())),
            "var",
            "no gene passes the vocabulary policy",
            f"genes detected in at least {min_cells} cells (corpora.<name>.vocab)",
        )
    specials = special_tokens(n_condition_tokens)
    table = pd.DataFrame(
        {
            "token": specials + list(freq.index),
            "kind": ["special"] * len(specials) + ["gene"] * len(freq),
            "gene_symbol": [""] * len(specials) + [symbols.get(g, g) for g in freq.index],
            "n_cells": [0] * len(specials) + freq.tolist(),
        }
    )
    table.insert(0, "token_id", np.arange(len(table)))
    return table


def vocab_hash(table: pd.DataFrame) -> str:
    """Content hash (16 hex) of the token list: same tokens in the same order, same hash."""
    return hashlib.sha256("\n".join(table["token"].astype(str)).encode()).hexdigest()[:16]


def write_vocab(table: pd.DataFrame, path: str | Path) -> str:
    """Write ``vocab.tsv`` atomically; returns its hash."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return vocab_hash(table)


class Vocab:
    """A loaded vocabulary: token <-> id, the gene tokens and the hash."""

    def __init__(self, table: pd.DataFrame, *, path: str | Path | None = None) -> None:
        expected = ["token_id", "token", "kind", "gene_symbol", "n_cells"]
        if (
            list(table.columns[:5]) != expected
            or not (table["token_id"].to_numpy() == np.arange(len(table))).all()
        ):
            raise ScfmInputError(
                path or "vocab",
                "columns",
                f"got {list(table.columns)}",
                f"{expected} with token_id = 0..n-1",
            )
        self.table = table
        self.path = path
        self.hash = vocab_hash(table)
        self.tokens = table["token"].astype(str).tolist()
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.n_special = int((table["kind"] == "special").sum())
        self.genes = self.tokens[self.n_special :]

    @classmethod
    def read(cls, path: str | Path) -> Vocab:
        """Read a ``vocab.tsv``."""
        table = pd.read_csv(
            path, sep="\t", dtype={"token": str, "gene_symbol": str}, keep_default_na=False
        )
        return cls(table, path=path)

    def __len__(self) -> int:
        return len(self.tokens)

    def special_ids(self) -> dict[str, int]:
        """Special token -> id."""
        return {t: i for i, t in enumerate(self.tokens[: self.n_special])}

    def map_genes(self, gene_ids: Any) -> np.ndarray:
        """Token id of each gene ID (``-1`` for genes not in the vocabulary)."""
        return np.fromiter(
            (self.index.get(str(g), -1) for g in gene_ids), dtype=np.int32, count=len(gene_ids)
        )
