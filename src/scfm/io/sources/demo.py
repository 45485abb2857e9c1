"""Source ``demo``: data embedded with the install, so the pipeline runs with no network.

- ``pbmc68k``: scanpy's bundled ``pbmc68k_reduced`` (700 real PBMCs x 765 genes, 10 labelled
  types). Its ``raw.X`` is log1p of counts normalised to 1e4 per cell, so integer counts come back
  as ``round(expm1(raw.X) * n_counts / 1e4)`` (values were stored to 3 decimals: the largest
  rounding residual is ~0.08, far below 0.5).
- ``simulated``: :func:`scfm.io.simulate.simulate_counts` with known types, hierarchy, batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.atomic import atomic_path
from scfm.io.download import hash_file
from scfm.io.simulate import SimulationParams, simulate_counts


def pbmc68k_counts() -> ad.AnnData:
    """Scanpy's pbmc68k_reduced with its integer counts recovered (see module docstring)."""
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    logn = src.raw.X.toarray() if sp.issparse(src.raw.X) else np.asarray(src.raw.X)
    approx = np.expm1(logn) * src.obs["n_counts"].to_numpy()[:, None] / 1e4
    counts = np.round(approx)
    residual = float(np.abs(approx - counts).max())
    if residual > 0.25:  # the recovery is exact up to storage rounding; anything else is a bug
        raise RuntimeError(f"pbmc68k count recovery is off by {residual:.2f}; scanpy data changed?")
    obs = pd.DataFrame(
        {
            "bulk_labels": src.obs["bulk_labels"].astype(str).values,
            "phase": src.obs["phase"].astype(str).values,
        },
        index=src.obs_names,
    )
    var = pd.DataFrame(index=src.raw.var_names.astype(str))
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.int32)), obs=obs, var=var)
    adata.uns["recovery_max_residual"] = residual
    return adata


def fetch(name: str, cfg: dict[str, Any], outdir: Path, *, chunk_cells: int) -> dict[str, Any]:
    """Write the embedded dataset to ``outdir/<demo>.h5ad``; see :mod:`scfm.io.sources`."""
    if cfg["demo"] == "simulated_atac":
        return _simulated_atac(cfg, outdir)
    if cfg["demo"] == "pbmc68k":
        adata = pbmc68k_counts()
        defaults = {
            "obs_map": {"cell_type": "bulk_labels"},
            "obs_keep": ["phase"],
            "genes": {"id_type": "symbol"},
        }
        info = {
            "origin": "scanpy.datasets.pbmc68k_reduced (10x Genomics PBMC 68k subset)",
            "recovery_max_residual": adata.uns["recovery_max_residual"],
        }
    else:
        params = SimulationParams(**cfg.get("simulation", {}))
        adata = simulate_counts(params)
        del adata.uns["simulation"]["hierarchy"]
        defaults = {
            "obs_map": {"cell_type": "cell_type", "batch": "batch", "donor": "donor"},
            "obs_keep": ["lineage"],
            "genes": {"id_type": "as_is", "symbol_column": "gene_symbol"},
        }
        info = {"origin": "scfm.io.simulate", "params": params.__dict__}
    path = outdir / f"{cfg['demo']}.h5ad"
    with atomic_path(path, suffix=".tmp.h5ad") as tmp:
        adata.write_h5ad(tmp)
    record = {
        "path": str(path),
        "url": None,
        "size": path.stat().st_size,
        "sha256": hash_file(path),
    }
    return {"format": "h5ad", "matrices": [record], "defaults": defaults, "source_info": info}


def _simulated_atac(cfg: dict[str, Any], outdir: Path) -> dict[str, Any]:
    """Simulated scATAC fragments (BGZF + tabix) and barcode metadata on the dataset's genome.

    The genome is the one the config's ``references.<genome>.genome.simulated`` block makes
    (passed in as ``genome_spec`` by the workflow), so fragments and annotation agree.
    """
    from scfm.atac.simulate import simulate_fragments, simulate_genome

    spec = cfg.get("genome_spec") or {}
    if "simulated" not in spec:
        raise ValueError(
            "demo simulated_atac: its genome must be simulated too; expected "
            "references.<genome>.genome.simulated"
        )
    genome = simulate_genome(**spec["simulated"])
    params = dict(cfg.get("atac_simulation") or {})
    path = outdir / "fragments.tsv.gz"
    meta = simulate_fragments(genome, path, **params)
    barcodes = outdir / "barcodes.tsv"
    with atomic_path(barcodes, suffix=".tsv") as tmp:
        meta.to_csv(tmp, sep="\t", index=False)
    record = {
        "path": str(path),
        "url": None,
        "size": path.stat().st_size,
        "sha256": hash_file(path),
    }
    return {
        "format": "fragments",
        "matrices": [record],
        "obs_table": {"path": str(barcodes), "key": "barcode"},
        "defaults": {"obs_map": {"cell_type": "cell_type", "batch": "batch", "donor": "donor"}},
        "source_info": {"origin": "scfm.atac.simulate", "params": params, "genome": spec},
    }
