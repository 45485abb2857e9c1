"""The scATAC stages as the Snakemake rules call them: one function per rule.

Each function reads the files of the previous stage, calls the library (fragments, qc, tiles,
peaks, activity) and writes its outputs atomically. The last stage, :func:`features`, turns the
configured matrix (peaks, tiles or gene activity) into ``results/qc/<dataset>.h5ad`` with the
same contract as an RNA dataset's QC'd h5ad (integer counts, harmonised obs), so corpora,
tokenizers, training and benchmarks take scATAC without a fork.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.provenance import versions

log = logging.getLogger("scfm.atac")


def genome_from_files(chrom_sizes: str | Path, genes: str | Path, name: str = "") -> Any:
    """The Genome written by :func:`reference_genome`."""
    from scfm.atac.genome import load_genome

    return load_genome(chrom_sizes=chrom_sizes, annotation=genes, name=name)


def reference_genome(spec: dict[str, Any], out_dir: str | Path, *, name: str = "") -> Any:
    """Write ``chrom.sizes`` and ``genes.tsv`` of a ``references.<name>.genome`` block."""
    from scfm.atac import genome as g

    if "simulated" in spec:
        from scfm.atac.simulate import simulate_genome

        genome = simulate_genome(**spec["simulated"])
    else:
        annotation = spec["annotation"]
        if annotation.get("url"):
            from scfm.io.download import download_configured

            target = Path(out_dir) / Path(annotation["url"].split("?")[0]).name
            download_configured(annotation["url"], target, annotation)
            annotation_path = target
        else:
            annotation_path = Path(annotation["path"])
        sizes = (
            g.read_chrom_sizes(spec["chrom_sizes"])
            if spec.get("chrom_sizes")
            else g.builtin_chrom_sizes(spec.get("assembly", "hg38"))
        )
        genome = g.load_genome(chrom_sizes=sizes, annotation=annotation_path, name=name)
    g.write_genome(genome, out_dir)
    log.info(
        "genome %s: %d chromosomes, %d genes", name, len(genome.chrom_sizes), len(genome.genes)
    )
    return genome


def raw_files(manifest_path: str | Path) -> dict[str, Any]:
    """Fragment file and barcode metadata recorded by the download stage."""
    manifest = json.loads(Path(manifest_path).read_text())
    if manifest.get("format") != "fragments":
        raise ScfmInputError(
            manifest_path,
            "format",
            f"{manifest.get('format')!r}",
            "'fragments' for a dataset with modality atac (a fragment .tsv[.gz] file)",
        )
    return {
        "fragments": manifest["matrices"][0]["path"],
        "barcodes": (manifest.get("obs_table") or {}).get("path"),
    }


def blacklist_file(spec: str | dict[str, Any], out: str | Path) -> Path:
    """Fetch ``qc.atac.blacklist`` given as ``{url, sha256}`` to ``out`` (checked download)."""
    from scfm.io.download import download_configured

    download_configured(spec["url"], out, spec)
    return Path(out)


def fragments(
    manifest: str | Path,
    chrom_sizes: str | Path,
    genes: str | Path,
    out: str | Path,
    *,
    cfg: dict[str, Any],
    blacklist: str | Path | None = None,
) -> dict[str, Any]:
    """Validate, sort when needed, bgzip and index a dataset's fragments.

    ``blacklist``: a BED of regions whose fragments are removed (``qc.atac.blacklist``).
    """
    from scfm.atac.fragments import prepare_fragments

    genome = genome_from_files(chrom_sizes, genes)
    raw = raw_files(manifest)
    stats = prepare_fragments(
        raw["fragments"],
        out,
        genome=genome,
        chrom_map=cfg.get("chrom_map") or None,
        blacklist=blacklist or None,
    )
    log.info("fragments: %s", stats)
    return stats


def _metadata(cfg: dict[str, Any], manifest: str | Path) -> pd.DataFrame | None:
    """Per-barcode metadata (config ``barcodes`` or the source's own table), by barcode."""
    path = cfg.get("barcodes") or raw_files(manifest)["barcodes"]
    if not path:
        return None
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "barcode" not in table.columns:
        raise ScfmInputError(
            path,
            "header",
            f"no 'barcode' column (columns: {list(table.columns)})",
            "a TSV with a 'barcode' column and per-cell metadata",
        )
    if table["barcode"].duplicated().any():
        dup = table["barcode"][table["barcode"].duplicated()].iloc[0]
        raise ScfmInputError(path, "barcode", f"duplicated barcode {dup!r}", "unique barcodes")
    return table.set_index("barcode")


def barcode_qc(
    fragments_path: str | Path,
    chrom_sizes: str | Path,
    genes: str | Path,
    manifest: str | Path,
    out_table: str | Path,
    out_barcodes: str | Path,
    out_png: str | Path,
    *,
    dataset: str,
    cfg: dict[str, Any],
    qc: dict[str, Any],
) -> pd.DataFrame:
    """Per-barcode QC, thresholds, the kept barcodes with harmonised obs, and the figure."""
    from scfm.atac import qc as atac_qc
    from scfm.io.standardize import harmonise_obs, settings_with_defaults

    genome = genome_from_files(chrom_sizes, genes)
    table, lengths = atac_qc.barcode_qc(fragments_path, genome)
    thresholds = {
        "min_fragments": qc["min_fragments"],
        "min_tsse": qc["min_tsse"],
        "max_frac_mito": qc["max_frac_mito"],
        "max_nucleosome_signal": qc["max_nucleosome_signal"],
    }
    keep = atac_qc.filter_barcodes(table, **thresholds)
    meta = _metadata(cfg, manifest)
    if meta is not None:
        listed = table.index.isin(meta.index)
        if not listed.any():
            raise ScfmInputError(
                cfg.get("barcodes") or manifest,
                "barcode",
                f"none of the {len(meta)} listed barcodes occurs in the fragments "
                f"(e.g. {list(meta.index[:3])} vs {list(table.index[:3])})",
                "barcodes spelled as in the fragment file (suffixes such as -1 included)",
            )
        keep &= listed
    table["pass_qc"] = keep
    log.info("%s: %d of %d barcodes pass QC", dataset, int(keep.sum()), len(table))
    if not keep.any():
        raise ScfmInputError(
            fragments_path, "barcodes", "no barcode passes QC", f"some barcodes within {thresholds}"
        )
    kept = table[keep]
    src = meta.reindex(kept.index) if meta is not None else pd.DataFrame(index=kept.index)
    defaults = json.loads(Path(manifest).read_text()).get("defaults") or {}
    obs_map = settings_with_defaults(cfg, defaults)["obs_map"]
    absent = [c for c in obs_map.values() if c not in src.columns]
    if absent:
        raise ScfmInputError(
            cfg.get("barcodes") or manifest,
            "columns",
            f"obs_map names {absent}, not in the barcode metadata",
            f"one of {list(src.columns)}",
        )
    obs = harmonise_obs(
        src,
        dataset=dataset,
        obs_map=obs_map,
        obs_values={"assay": "scATAC-seq", **(cfg.get("obs_values") or {})},
        obs_keep=[],
    )
    obs = pd.concat([obs, kept.drop(columns=["pass_qc"])], axis=1)
    obs.index.name = "barcode"
    with atomic_path(out_table, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index_label="barcode", float_format="%.6g")
    with atomic_path(out_barcodes, suffix=".tsv") as tmp:
        obs.to_csv(tmp, sep="\t", float_format="%.6g")
    atac_qc.qc_figure(table, lengths, thresholds, out_png)
    return table


def kept_barcodes(barcodes_tsv: str | Path) -> list[str]:
    """The barcodes that passed QC, in file order."""
    return pd.read_csv(barcodes_tsv, sep="\t", usecols=["barcode"], dtype=str)["barcode"].tolist()


def features(
    matrix: str | Path,
    barcodes_tsv: str | Path,
    out: str | Path,
    *,
    dataset: str,
    kind: str,
) -> ad.AnnData:
    """The QC'd h5ad of an scATAC dataset: the chosen matrix with harmonised obs."""
    adata = ad.read_h5ad(matrix)
    obs = pd.read_csv(barcodes_tsv, sep="\t", dtype={"barcode": str}).set_index("barcode")
    missing = adata.obs_names.difference(obs.index)
    if len(missing):
        raise ScfmInputError(
            matrix, "obs_names", f"{len(missing)} barcodes not in {barcodes_tsv}", "the QC'd ones"
        )
    extra = [c for c in adata.obs.columns if c not in obs.columns]
    obs = pd.concat([obs.loc[adata.obs_names], adata.obs[extra]], axis=1)
    for col in ("cell_type", "batch", "donor", "tissue", "assay", "dataset"):
        obs[col] = pd.Categorical(obs[col].astype(str))
    X = sp.csr_matrix(adata.X)
    if X.dtype != np.int32:
        X = X.astype(np.int32)
    var = adata.var.copy()
    if "gene_symbol" not in var:
        var["gene_symbol"] = var.index.astype(str)
    # cells in which each feature is seen, as the RNA QC stage records it (vocabulary policy)
    var["n_cells"] = np.asarray((X > 0).sum(axis=0)).ravel().astype(np.int64)
    out_adata = ad.AnnData(X=X, obs=obs, var=var)
    out_adata.var_names.name = "feature_id" if kind != "genes" else "gene_id"
    out_adata.uns["scfm"] = {
        "atac_features": json.dumps(
            {"dataset": dataset, "features": kind, "source": str(matrix), "versions": versions()}
        )
    }
    with atomic_path(out, suffix=".h5ad") as tmp:
        out_adata.write_h5ad(tmp)
    log.info("%s: %d cells x %d %s written to %s", dataset, *out_adata.shape, kind, out)
    return out_adata


def merge_peaks(
    summits: Sequence[str | Path],
    chrom_sizes: str | Path,
    genes: str | Path,
    out: str | Path,
    *,
    width: int,
) -> Path:
    """One fixed-width peak set from every dataset's summits (shared feature space)."""
    from scfm.atac.peaks import merge_summits

    genome = genome_from_files(chrom_sizes, genes)
    return merge_summits(list(summits), out, width=width, genome=genome)
