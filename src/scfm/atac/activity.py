"""Gene activity: accessibility over each gene's body and promoter, in RNA gene space.

Window of a gene (0-based, half-open; ``start``/``end`` from :attr:`Genome.genes`):

- ``+`` strand: ``[start - upstream, end + downstream)``
- ``-`` strand: ``[start - downstream, end + upstream)``

i.e. the gene body extended ``upstream`` bp 5' of the TSS and ``downstream`` bp 3' of the
transcription end site, clipped to the chromosome. With the defaults (2,000 / 0) this is
Signac's ``GeneActivity`` window (``extend.upstream = 2000``, ``extend.downstream = 0``) and
SnapATAC2's ``make_gene_matrix`` (``upstream=2000, downstream=0, include_gene_body=True``).
Overlapping windows of different genes each get the counts.

Counting (:mod:`scfm.atac.tiles`): ``"insertion"`` (default; Tn5 cut sites in the window, as
SnapATAC2 with ``counting_strategy="insertion"``) or ``"fragment"`` (fragments overlapping the
window by at least one base, which is how Signac counts: its ``FeatureMatrix`` counts fragments,
not cut sites, stuart-lab/signac#965).

``var_names`` are the genome's ``gene_id`` (Ensembl IDs without version), so ATAC cells share
the RNA gene vocabulary; ``var["gene_symbol"]`` is the gene name, plus the window's
chrom/start/end and the strand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.atac.tiles import IntervalMap, MatrixSummary, count_features, frozen_index
from scfm.errors import ScfmInputError
from scfm.spec import default

log = logging.getLogger(__name__)


def gene_windows(genome: Any, *, upstream: int = 2000, downstream: int = 0) -> pd.DataFrame:
    """One window per gene (see module docstring), in the genome's gene order.

    Genes on chromosomes absent from ``genome.chrom_sizes`` are left out; of genes sharing a
    ``gene_id`` the first is kept (both logged). Columns: ``gene_id`` (index), ``gene_symbol``,
    ``chrom``, ``start``, ``end``, ``strand``.
    """
    if upstream < 0 or downstream < 0:
        raise ValueError(f"upstream/downstream must be >= 0, got {upstream}/{downstream}")
    genes = genome.genes
    missing = [
        c for c in ("chrom", "start", "end", "strand", "gene_id", "gene_name") if c not in genes
    ]
    if missing or len(genes) == 0:
        raise ScfmInputError(
            getattr(genome, "name", "genome"),
            "genes",
            f"no gene annotation (missing columns {missing})" if missing else "no genes",
            "a Genome loaded with a gene annotation (GTF or gene TSV)",
        )
    sizes = genes["chrom"].map(genome.chrom_sizes)
    on_genome = sizes.notna().to_numpy()
    if not on_genome.all():
        log.info(
            "gene_activity: %d genes on chromosomes outside the genome left out",
            int((~on_genome).sum()),
        )
    genes = genes[on_genome]
    sizes = sizes[on_genome].to_numpy(np.int64)
    dup = genes["gene_id"].duplicated().to_numpy()
    if dup.any():
        log.warning(
            "gene_activity: %d repeated gene_id(s) (e.g. %s); the first record of each is kept",
            int(dup.sum()),
            genes["gene_id"][dup].iloc[0],
        )
        genes, sizes = genes[~dup], sizes[~dup]
    plus = (genes["strand"] == "+").to_numpy()
    start = genes["start"].to_numpy(np.int64) - np.where(plus, upstream, downstream)
    end = genes["end"].to_numpy(np.int64) + np.where(plus, downstream, upstream)
    return pd.DataFrame(
        {
            "gene_symbol": genes["gene_name"].astype(str).to_numpy(),
            "chrom": pd.Categorical(genes["chrom"].to_numpy(), categories=list(genome.chrom_sizes)),
            "start": np.clip(start, 0, sizes),
            "end": np.clip(end, 0, sizes),
            "strand": genes["strand"].to_numpy(),
        },
        index=pd.Index(genes["gene_id"].astype(str).to_numpy(), dtype=object, name="gene_id"),
    )


def gene_activity(
    fragments: str | Path,
    genome: Any,
    barcodes: Sequence[str],
    out_h5ad: str | Path,
    *,
    upstream: int = 2000,
    downstream: int = 0,
    counting: str = default("qc.atac.counting"),
    binarize: bool = default("qc.atac.binarize"),
    chunk_size: int = 2_000_000,
    compression: str | None = default("io.compression"),
    buffer_pairs: int = 100_000_000,
) -> MatrixSummary:
    """Cells x genes counts over gene body + promoter (window defined in the module docstring).

    Parameters
    ----------
    fragments
        Fragment file.
    genome
        :class:`scfm.atac.genome.Genome` with a gene table.
    barcodes
        Cells, in output row order.
    out_h5ad
        Output h5ad (int32 CSR ``X``), written atomically.
    upstream, downstream
        Window extension 5' of the TSS and 3' of the gene end, in bp.
    counting
        ``"insertion"`` (default), ``"paired-insertion"`` or ``"fragment"`` (Signac-like).
    binarize, chunk_size, compression, buffer_pairs
        As for :func:`scfm.atac.tiles.tile_matrix`.

    Returns
    -------
    MatrixSummary
        Record also in ``uns["scfm"]["gene_activity"]``; per-cell ``n_in_genes`` and
        ``fraction_in_genes`` (units in at least one gene window).
    """
    var = gene_windows(genome, upstream=upstream, downstream=downstream)
    chroms = frozen_index(genome.chrom_sizes)
    windows = IntervalMap(var["chrom"].astype(str).to_numpy(), var["start"], var["end"], chroms)
    return count_features(
        fragments,
        windows,
        barcodes,
        out_h5ad,
        var=var,
        stage="gene_activity",
        params={
            "genome": getattr(genome, "name", None),
            "upstream": int(upstream),
            "downstream": int(downstream),
            "n_genes": len(var),
        },
        counting=counting,
        binarize=binarize,
        chunk_size=chunk_size,
        compression=compression,
        buffer_pairs=buffer_pairs,
        obs_names={"n_in_features": "n_in_genes", "fraction_in_features": "fraction_in_genes"},
    )
