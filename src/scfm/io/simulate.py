"""A small simulator of single-cell counts with known truth, for the demo and for tests.

Cells come from a two-level cell-type hierarchy (lineages -> types), several batches with a
multiplicative per-gene batch effect and a library-size shift, and donors nested in batches.
Counts are negative binomial (gamma-Poisson), the standard model of UMI counts. Later stages use
the known labels to check that metrics move the right way (e.g. a batch-corrected embedding
should mix batches but keep types apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

# lineage -> cell types; a hierarchy for ontology-aware metrics (scGraph, hierarchical F1).
HIERARCHY = {
    "lymphoid": ["T cell", "B cell", "NK cell"],
    "myeloid": ["monocyte", "dendritic cell"],
    "stromal": ["fibroblast"],
}


@dataclass(frozen=True)
class SimulationParams:
    """Simulator settings (see ``datasets.<name>.simulation`` in the config schema)."""

    n_cells: int = 3000
    n_genes: int = 2000
    n_batches: int = 3
    batch_effect: float = 0.5
    seed: int = 0
    donors_per_batch: int = 2
    dispersion: float = 0.3  # NB overdispersion (1/shape); ~0.1-0.5 for UMI data
    n_mito: int = 13  # MT- genes, as in the human mitochondrial genome

    def __post_init__(self) -> None:
        if self.n_cells < 10 or self.n_genes < 50 or self.n_batches < 1:
            raise ValueError("simulation needs n_cells >= 10, n_genes >= 50 and n_batches >= 1")


def simulate_counts(params: SimulationParams | None = None, **kwargs: object) -> ad.AnnData:
    """Simulate integer UMI counts with cell types, a hierarchy, batches and donors.

    Returns
    -------
    AnnData
        ``X``: int32 CSR counts; ``obs``: ``cell_type``, ``lineage``, ``batch``, ``donor``;
        ``var``: ``gene_symbol`` (``MT-*`` for mitochondrial genes); ``uns['simulation']``.
    """
    p = params or SimulationParams(**kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(p.seed)
    types = [(lin, t) for lin, ts in HIERARCHY.items() for t in ts]
    n_types = len(types)

    # Gene baseline: log-normal mean expression; lineage then type programmes on top, so that
    # types of one lineage are closer to each other than to other lineages.
    base = rng.normal(-1.0, 1.2, p.n_genes)
    lineage_fx = {lin: _programme(rng, p.n_genes, 0.06, 1.2) for lin in HIERARCHY}
    type_fx = np.stack(
        [lineage_fx[lin] + _programme(rng, p.n_genes, 0.04, 1.5) for lin, _ in types]
    )
    batch_fx = rng.normal(0.0, p.batch_effect, (p.n_batches, p.n_genes))

    type_idx = rng.choice(n_types, size=p.n_cells, p=_proportions(rng, n_types))
    batch_idx = rng.integers(0, p.n_batches, p.n_cells)
    donor_idx = batch_idx * p.donors_per_batch + rng.integers(0, p.donors_per_batch, p.n_cells)
    lib = rng.lognormal(
        np.log(2500) + 0.3 * (batch_idx - (p.n_batches - 1) / 2) * (p.batch_effect > 0), 0.4
    )

    logits = base[None, :] + type_fx[type_idx] + batch_fx[batch_idx]
    mito = np.arange(p.n_mito)
    logits[:, mito] += 1.5  # mitochondrial transcripts are abundant
    prop = np.exp(logits - logits.max(axis=1, keepdims=True))
    prop /= prop.sum(axis=1, keepdims=True)
    mu = prop * lib[:, None]
    shape = 1.0 / p.dispersion
    counts = rng.poisson(rng.gamma(shape, mu / shape)).astype(np.int32)

    symbols = [f"MT-SIM{i + 1}" for i in mito] + [
        f"SIMG{i:05d}" for i in range(p.n_mito, p.n_genes)
    ]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([types[i][1] for i in type_idx]),
            "lineage": pd.Categorical([types[i][0] for i in type_idx]),
            "batch": pd.Categorical([f"batch{b}" for b in batch_idx]),
            "donor": pd.Categorical([f"donor{d}" for d in donor_idx]),
        },
        index=pd.Index([f"sim{i:06d}" for i in range(p.n_cells)]),
    )
    var = pd.DataFrame({"gene_symbol": symbols}, index=pd.Index(symbols))
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    adata.uns["simulation"] = {
        **p.__dict__,
        "hierarchy": {k: list(v) for k, v in HIERARCHY.items()},
    }
    return adata


def _programme(rng: np.random.Generator, n_genes: int, frac: float, scale: float) -> np.ndarray:
    fx = np.zeros(n_genes)
    hit = rng.random(n_genes) < frac
    fx[hit] = rng.normal(0.0, scale, hit.sum())
    return fx


def _proportions(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.dirichlet(np.full(n, 5.0))
    return w / w.sum()
