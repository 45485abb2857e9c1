"""One function per benchmark job: read the evaluation set and an embedding, write one table.

Every metric job writes the long format ``method, type, metric, value`` (see
:data:`scfm.bench.scib.COLUMNS`), so tables of any metrics and methods concatenate into the
summary without knowing what produced them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.bench.evalset import labelled_cells, log_normalized, read_evalset
from scfm.bench.scib import COLUMNS
from scfm.io.embedding import read_embedding
from scfm.paths import check_outputs_not_inputs
from scfm.spec import default

#: Column of every label-based metric's table: cells left out for having no label.
EXCLUDED = "n_unlabelled_excluded"

log = logging.getLogger("scfm.bench")


def _load(evalset: str | Path, embedding: str | Path) -> tuple[ad.AnnData, np.ndarray]:
    adata = read_evalset(evalset, counts=False)
    return adata, read_embedding(embedding, obs_names=adata.obs_names)


def write_table(table: pd.DataFrame, out_tsv: str | Path) -> None:
    """Write a TSV atomically."""
    with atomic_path(out_tsv, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def scib_job(
    evalset: str | Path,
    embedding: str | Path,
    unintegrated: str | Path,
    out_tsv: str | Path,
    *,
    method: str,
    kbet: bool = default("benchmarks.*.scib.kbet"),
    leiden: bool = default("benchmarks.*.scib.leiden"),
    threads: int | None = None,
) -> pd.DataFrame:
    """scib-metrics of one method (``unintegrated``: the pca baseline's embedding file)."""
    from scfm.bench.scib import scib_scores

    check_outputs_not_inputs(
        {"out_tsv": out_tsv},
        {"evalset": evalset, "embedding": embedding, "unintegrated": unintegrated},
    )
    adata, emb = _load(evalset, embedding)
    pre = read_embedding(unintegrated, obs_names=adata.obs_names)
    # scib-metrics' batch metrics are computed per label too: all of them use labelled cells
    cells = labelled_cells(adata, "scib", method)
    table = scib_scores(
        emb[cells],
        adata.obs["scfm_label"].to_numpy()[cells],
        adata.obs["scfm_batch"].to_numpy()[cells],
        pre[cells],
        method=method,
        kbet=kbet,
        leiden=leiden,
        n_jobs=threads,
    )
    table[EXCLUDED] = int((~cells).sum())
    write_table(table, out_tsv)
    return table


def scgraph_reference_job(
    evalset: str | Path, out_tsv: str | Path, params: dict[str, Any] | None = None
) -> pd.DataFrame:
    """The scGraph reference graph of an evaluation set (shared by every method's job)."""
    from scfm.bench.scgraph import scgraph_reference

    check_outputs_not_inputs({"out_tsv": out_tsv}, {"evalset": evalset})
    params = dict(params or {})
    adata = read_evalset(evalset)
    adata = adata[labelled_cells(adata, "scGraph reference")]
    lognorm = ad.AnnData(X=log_normalized(adata), obs=adata.obs[["scfm_label", "scfm_batch"]])
    lognorm.var_names = adata.var_names
    reference = scgraph_reference(lognorm, "scfm_label", "scfm_batch", path=str(evalset), **params)
    with atomic_path(out_tsv, suffix=".tsv") as tmp:
        reference.to_csv(tmp, sep="\t", float_format="%.17g")
    return reference


def scgraph_job(
    evalset: str | Path,
    embedding: str | Path,
    reference_tsv: str | Path,
    out_tsv: str | Path,
    out_types_tsv: str | Path,
    *,
    method: str,
    trim_rate: float = default("benchmarks.*.scgraph.trim_rate"),
) -> pd.DataFrame:
    """The scGraph scores of one method against the evaluation set's reference graph."""
    from scfm.bench.scgraph import scgraph_scores

    check_outputs_not_inputs(
        {"out_tsv": out_tsv, "out_types_tsv": out_types_tsv},
        {"evalset": evalset, "embedding": embedding, "reference_tsv": reference_tsv},
    )
    adata, emb = _load(evalset, embedding)
    reference = pd.read_csv(reference_tsv, sep="\t", index_col=0)
    reference.index = reference.index.astype(str)
    reference.columns = reference.columns.astype(str)
    cells = labelled_cells(adata, "scGraph", method)
    scores, per_type = scgraph_scores(
        emb[cells], adata.obs["scfm_label"].to_numpy()[cells], reference, trim_rate=trim_rate
    )
    table = pd.DataFrame(
        [{"method": method, "type": "scGraph", "metric": k, "value": v} for k, v in scores.items()],
        columns=COLUMNS,
    )
    table[EXCLUDED] = int((~cells).sum())
    write_table(table, out_tsv)
    per_type = per_type.rename_axis("cell_type").reset_index()
    per_type.insert(0, "method", method)
    write_table(per_type, out_types_tsv)
    return table


def annotation_job(
    evalset: str | Path,
    embedding: str | Path,
    out_tsv: str | Path,
    *,
    method: str,
    classifiers: Sequence[str] = tuple(default("benchmarks.*.annotation.classifiers")),
    k: int = default("benchmarks.*.annotation.k"),
    n_splits: int = default("benchmarks.*.annotation.n_splits"),
    seed: int = 0,
) -> pd.DataFrame:
    """Cell-type annotation from one embedding, split by ``obs["scfm_split"]`` groups."""
    from scfm.bench.annotation import annotation_scores

    check_outputs_not_inputs({"out_tsv": out_tsv}, {"evalset": evalset, "embedding": embedding})
    adata, emb = _load(evalset, embedding)
    cells = labelled_cells(adata, "annotation", method)
    scores = annotation_scores(
        emb[cells],
        adata.obs["scfm_label"].to_numpy()[cells],
        adata.obs["scfm_split"].to_numpy()[cells],
        classifiers=tuple(classifiers),
        n_splits=n_splits,
        k=k,
        seed=seed,
    )
    names = {"logreg": "LogReg", "knn": "kNN"}
    rows = []
    for rec in scores.to_dict("records"):
        clf = names.get(rec["classifier"], rec["classifier"])
        log.info("%s %s: %s", method, clf, rec)
        rows.append(
            {
                "method": method,
                "type": "Annotation",
                "metric": f"{clf} accuracy",
                "value": rec["accuracy"],
            }
        )
        rows.append(
            {
                "method": method,
                "type": "Annotation",
                "metric": f"{clf} macro-F1",
                "value": rec["macro_f1"],
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table[EXCLUDED] = int((~cells).sum())
    write_table(table, out_tsv)
    return table


def masked_job(
    evalset: str | Path,
    model: str | Path,
    out_tsv: str | Path,
    *,
    method: str,
    max_cells: int | None = default("benchmarks.*.masked.max_cells"),
    batch_size: int = 256,
    seed: int = 0,
    gene_stats: str | Path | None = None,
) -> pd.DataFrame:
    """Masked-prediction loss of a trained run on the evaluation cells, beside trivial ones."""
    from scfm.embed import masked_prediction

    check_outputs_not_inputs(
        {"out_tsv": out_tsv}, {"evalset": evalset, "model": model, "gene_stats": gene_stats}
    )
    adata = read_evalset(evalset)
    result = masked_prediction(adata, model, batch_size=batch_size, max_cells=max_cells, seed=seed)
    rows = []
    for rec in result.to_dict("records"):
        objective = rec["objective"]
        for column, value in rec.items():
            wanted = column == "loss" or (
                column.startswith("trivial_") and column != "trivial_stats"
            )
            if wanted and pd.notna(value):
                name = f"{objective} loss" if column == "loss" else f"{objective} {column}"
                rows.append(
                    {"method": method, "type": "Masked prediction", "metric": name, "value": value}
                )
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_table(table, out_tsv)
    return table


def umap_job(
    evalset: str | Path, embedding: str | Path, out_png: str | Path, *, method: str, seed: int = 0
) -> None:
    """UMAP of one method's embedding coloured by cell type and batch."""
    from scfm.bench.plots import umap_figure

    check_outputs_not_inputs({"out_png": out_png}, {"evalset": evalset, "embedding": embedding})
    adata, emb = _load(evalset, embedding)
    umap_figure(
        emb,
        adata.obs["scfm_label"].astype(object).fillna("(no label)").to_numpy(),
        adata.obs["scfm_batch"].to_numpy(),
        out_png,
        title=method,
        seed=seed,
    )


#: Columns the summaries carry next to the scores: evaluation cells in the method's training
#: split (count and fraction; empty for baselines, which have no pretraining corpus).
OVERLAP_COLUMNS = ["train_overlap", "train_overlap_fraction"]


def summary_job(
    tables: Sequence[str | Path],
    out_tsv: str | Path,
    out_wide_tsv: str | Path,
    out_png: str | Path | None = None,
    *,
    evalset: str = "",
    leakage: str | Path | None = None,
) -> pd.DataFrame:
    """Merge metric tables: long (with the evaluation set) and wide (methods x metrics).

    With ``leakage`` (the ``leakage.tsv`` of :func:`scfm.bench.leakage.leakage_job`) every row
    gets :data:`OVERLAP_COLUMNS`: how many of the evaluation cells the method trained on.
    """
    from scfm.bench.plots import NEGATIVE_CONTROL, gamed_aggregates, results_table_figure

    outputs = {"out_tsv": out_tsv, "out_wide_tsv": out_wide_tsv, "out_png": out_png}
    check_outputs_not_inputs(outputs, {f"tables[{i}]": t for i, t in enumerate(tables)})
    long = pd.concat([pd.read_csv(t, sep="\t") for t in tables], ignore_index=True)
    if evalset:
        long.insert(0, "evalset", evalset)
    if leakage is not None:
        from scfm.bench.leakage import warn_leakage

        overlap = pd.read_csv(leakage, sep="\t")
        warn_leakage(overlap, evalset)
        overlap = overlap.set_index("method")
        long["train_overlap"] = long["method"].map(overlap["n_train"]).astype("Int64")
        long["train_overlap_fraction"] = long["method"].map(overlap["train_fraction"])
    write_table(long, out_tsv)
    wide = long.pivot_table(
        index="method", columns="metric", values="value", aggfunc="first", sort=False
    )
    if leakage is not None:
        first = long.drop_duplicates("method").set_index("method")
        for i, column in enumerate(OVERLAP_COLUMNS):
            wide.insert(i, column, first.loc[wide.index, column])
    write_table(wide.reset_index(), out_wide_tsv)
    types = long.drop_duplicates("metric").set_index("metric")["type"]
    for column, beaten in gamed_aggregates(wide, types).items():
        log.warning(
            "%s: %s (the negative control) scores at or above %s on the aggregate %r: it does "
            "not separate them from noise here; read the individual metrics (marked in the "
            "results table)",
            evalset,
            NEGATIVE_CONTROL,
            ", ".join(beaten),
            column,
        )
    if out_png is not None:
        results_table_figure(long, out_png, title=evalset)
    return long


def merge_summaries(tables: Sequence[str | Path], out_tsv: str | Path) -> pd.DataFrame:
    """Concatenate the long summaries of every evaluation set into one table."""
    check_outputs_not_inputs(
        {"out_tsv": out_tsv}, {f"tables[{i}]": t for i, t in enumerate(tables)}
    )
    merged = pd.concat([pd.read_csv(t, sep="\t") for t in tables], ignore_index=True)
    write_table(merged, out_tsv)
    return merged
