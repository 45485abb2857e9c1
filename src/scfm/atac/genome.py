"""Genomes for scATAC: chromosome sizes, gene annotation, TSSs and chromosome-name harmonisation.

A :class:`Genome` is what every ATAC stage needs to know about the reference: the ordered
chromosome sizes (the order is the sort order of every fragment file and bin matrix we write)
and a gene table in 0-based half-open coordinates (BED convention). Gene annotation is read from
a GENCODE/Ensembl GTF (``gene`` records, plus ``transcript`` records for the TSS set), from the
GENCODE-derived gene TSV in ``../shared/data/reference`` (1-based, converted on read), or from
the ``genes.tsv`` that :func:`write_genome` writes.

Chromosome names differ between sources (``chr1`` vs ``1``, ``chrM`` vs ``MT``) and fragment
files contain alt/unplaced contigs that no bin matrix should carry; :func:`harmonize_chrom`
maps the names found in a file onto the genome and reports what it drops.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError

log = logging.getLogger(__name__)

GENE_COLUMNS = ["chrom", "start", "end", "strand", "gene_id", "gene_name"]
TRANSCRIPT_COLUMNS = ["chrom", "start", "end", "strand", "gene_id", "transcript_id"]
BUILTIN_ASSEMBLIES = ("hg38", "mm10")
MITO_NAMES = frozenset({"chrM", "chrMT", "MT", "M"})
# Our genes.tsv starts with this line, so the reader knows the coordinates are 0-based.
GENES_TSV_MAGIC = "# scfm genes.tsv v1: 0-based half-open coordinates (BED convention)"

# Contigs that are not primary chromosomes: alt haplotypes, fixes, random/unplaced scaffolds
# (UCSC *_alt, *_fix, *_random, chrUn_*; GenBank/RefSeq accessions GL000218.1, KI270706.1 ...),
# decoys, EBV, HLA alleles, lambda/phiX spike-ins.
_NON_PRIMARY = re.compile(
    r"(_alt|_fix|_random|_decoy|_hap\d*)$|^chrUn|^Un_|^(chr)?(GL|KI|JH|KB|KN|KV|KZ|ML|MU|NT_|NW_)"
    r"\d+(\.\d+)?|^(chr)?EBV$|^HLA-|^hs37d5$|^(chr)?lambda|^(chr)?phiX",
    re.IGNORECASE,
)


@dataclass
class Genome:
    """A reference genome: ordered chromosome sizes and a gene table (0-based, half-open).

    Attributes
    ----------
    name
        Assembly name (``hg38``, ``mm10``, ``sim``...).
    chrom_sizes
        Chromosome -> length, in the order every sorted output uses.
    genes
        One row per gene: ``chrom, start, end, strand, gene_id, gene_name``; ``start`` 0-based,
        ``end`` exclusive, ``strand`` ``+``/``-``, ``gene_id`` Ensembl without version where
        the source has one.
    transcripts
        Optional ``chrom, start, end, strand, gene_id, transcript_id`` (same conventions), read
        from a GTF; when present the TSS set is per transcript, as in SnapATAC2.
    """

    name: str
    chrom_sizes: dict[str, int]
    genes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=GENE_COLUMNS))
    transcripts: pd.DataFrame | None = None

    @property
    def chroms(self) -> list[str]:
        """Chromosome names in genome order."""
        return list(self.chrom_sizes)

    @property
    def mito_chroms(self) -> list[str]:
        """The mitochondrial chromosome name(s) of this genome (``chrM``/``MT``), maybe none."""
        return [c for c in self.chrom_sizes if c in MITO_NAMES]

    def tss(self, *, level: Literal["auto", "gene", "transcript"] = "auto") -> pd.DataFrame:
        """Unique transcription start sites: ``chrom, position, strand, gene_id``.

        ``position`` is 0-based: ``start`` on ``+``, ``end - 1`` on ``-``. ``level="auto"``
        uses transcripts when the annotation provided them (every transcript's TSS, as
        SnapATAC2 reads a GTF), genes otherwise. Duplicated ``(chrom, position, strand)`` are
        kept once; rows are in genome order, then by position.
        """
        if level == "auto":
            level = "transcript" if self.transcripts is not None else "gene"
        table = self.genes if level == "gene" else self.transcripts
        if table is None:
            raise ValueError(f"genome {self.name!r} has no transcript annotation")
        plus = table["strand"].to_numpy() == "+"
        pos = np.where(plus, table["start"].to_numpy(np.int64), table["end"].to_numpy(np.int64) - 1)
        out = pd.DataFrame(
            {
                "chrom": table["chrom"].to_numpy(),
                "position": pos,
                "strand": table["strand"].to_numpy(),
                "gene_id": table["gene_id"].to_numpy(),
            }
        )
        out = out.drop_duplicates(["chrom", "position", "strand"])
        return _sort_by_genome(out, self.chroms, "position")


def _sort_by_genome(df: pd.DataFrame, chroms: list[str], pos: str) -> pd.DataFrame:
    order = {c: i for i, c in enumerate(chroms)}
    rank = df["chrom"].map(order).fillna(len(order)).to_numpy()
    idx = np.lexsort((df[pos].to_numpy(), rank))
    return df.iloc[idx].reset_index(drop=True)


# ----------------------------------------------------------------------------- chrom sizes
def builtin_chrom_sizes(assembly: str) -> dict[str, int]:
    """Primary chromosome sizes of ``hg38`` or ``mm10`` (UCSC), shipped with scfm."""
    if assembly not in BUILTIN_ASSEMBLIES:
        raise ValueError(f"no built-in chrom sizes for {assembly!r}; have {BUILTIN_ASSEMBLIES}")
    ref = resources.files("scfm.atac").joinpath("data", f"{assembly}.chrom.sizes")
    with resources.as_file(ref) as path:
        return read_chrom_sizes(path)


def read_chrom_sizes(path: str | Path) -> dict[str, int]:
    """Read a ``name<TAB>length`` file (UCSC ``chrom.sizes``; extra columns ignored), in order."""
    sizes: dict[str, int] = {}
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2:
                parts = line.split()
            try:
                length = int(parts[1])
            except (IndexError, ValueError):
                raise ScfmInputError(
                    path, f"line {lineno}", f"cannot parse {line.strip()!r}", "name<TAB>length"
                ) from None
            if length <= 0 or parts[0] in sizes:
                raise ScfmInputError(
                    path,
                    f"line {lineno}",
                    f"bad or repeated entry {line.strip()!r}",
                    "unique names with positive lengths",
                )
            sizes[parts[0]] = length
    if not sizes:
        raise ScfmInputError(path, "contents", "no chromosomes", "name<TAB>length lines")
    return sizes


def _open(path: str | Path):
    from scfm.atac.fragments import open_text  # local import: fragments imports this module

    return open_text(path)


# ----------------------------------------------------------------------------- annotation
def read_gene_annotation(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Read genes (and, from a GTF, transcripts) as 0-based half-open tables.

    Supported layouts, detected from the content:

    - GTF (GENCODE/Ensembl, plain or gzip): ``gene`` records -> genes, ``transcript`` records
      -> transcripts; ``gene_id``/``transcript_id`` lose their version (``ENSG00000223972.5``
      -> ``ENSG00000223972``; GENCODE's ``_PAR_Y`` suffix is kept so PAR copies stay unique).
    - the GENCODE gene TSV of ``../shared/data/reference`` (header ``chrom, start, end,
      gene_id_version, gene_name, strand, ...``, 1-based inclusive starts).
    - ``genes.tsv`` from :func:`write_genome` (0-based; first line :data:`GENES_TSV_MAGIC`).

    Returns ``(genes, transcripts)``; ``transcripts`` is ``None`` for the TSV layouts.
    """
    with _open(path) as fh:
        first = ""
        for line in fh:
            if line.startswith(GENES_TSV_MAGIC[:18]):
                return _clean_genes(path, _read_scfm_table(Path(path), GENE_COLUMNS)), None
            if line.strip() and not line.startswith("#"):  # GTF headers: "##..." or "#!..."
                first = line
                break
    header = first.rstrip("\r\n").split("\t")
    if len(header) == 9 and header[0] != "chrom":
        return _read_gtf(path)
    if {"chrom", "start", "end", "strand", "gene_name"} <= set(header):
        return _read_gencode_tsv(path), None
    raise ScfmInputError(
        path,
        "header",
        f"unrecognised annotation layout (first line {first[:80]!r})",
        "a GTF, the GENCODE gene TSV (chrom,start,end,gene_id_version,gene_name,strand,...) "
        "or a genes.tsv written by scfm",
    )


def _check_columns(path: str | Path, df: pd.DataFrame, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ScfmInputError(path, "header", f"missing columns {missing}", ", ".join(needed))


def strip_version(ids: pd.Series) -> pd.Series:
    """Drop the ``.N`` version from Ensembl ids, keeping suffixes such as ``_PAR_Y``."""
    return ids.astype(str).str.replace(r"^(ENS[A-Z]*\d+)\.\d+", r"\1", regex=True)


def _read_gencode_tsv(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype={"chrom": str})
    _check_columns(path, df, ["chrom", "start", "end", "strand", "gene_name"])
    if "gene_id" in df.columns:
        gene_id = strip_version(df["gene_id"])
    elif "gene_id_version" in df.columns:
        gene_id = strip_version(df["gene_id_version"])
    else:
        raise ScfmInputError(path, "header", "no gene_id column", "gene_id or gene_id_version")
    genes = pd.DataFrame(
        {
            "chrom": df["chrom"],
            "start": df["start"].astype(np.int64) - 1,  # 1-based inclusive -> 0-based
            "end": df["end"].astype(np.int64),
            "strand": df["strand"],
            "gene_id": gene_id,
            "gene_name": df["gene_name"].fillna(gene_id),
        }
    )
    return _clean_genes(path, genes)


_ATTR = {
    name: re.compile(rf'(?:^|;)\s*{name}\s+"?([^";]+)"?')
    for name in ("gene_id", "gene_name", "transcript_id")
}


def _read_gtf(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    cols = ["chrom", "source", "feature", "start", "end", "score", "strand", "frame", "attr"]
    genes, transcripts = [], []
    with _open(path) as fh:
        reader = pd.read_csv(
            fh,
            sep="\t",
            comment="#",
            header=None,
            names=cols,
            usecols=[0, 2, 3, 4, 6, 8],
            dtype={"chrom": str, "feature": str, "attr": str},
            chunksize=500_000,
        )
        for chunk in reader:
            for feature, sink in (("gene", genes), ("transcript", transcripts)):
                sub = chunk[chunk["feature"] == feature]
                if len(sub):
                    sink.append(sub)
    if not genes and not transcripts:
        raise ScfmInputError(path, "feature", "no gene or transcript records", "a GTF")

    def table(parts: list[pd.DataFrame], extra: str) -> pd.DataFrame:
        df = pd.concat(parts, ignore_index=True)
        attrs = df["attr"]
        out = pd.DataFrame(
            {
                "chrom": df["chrom"].to_numpy(),
                "start": df["start"].to_numpy(np.int64) - 1,  # GTF is 1-based inclusive
                "end": df["end"].to_numpy(np.int64),
                "strand": df["strand"].to_numpy(),
                "gene_id": strip_version(attrs.str.extract(_ATTR["gene_id"], expand=False)),
            }
        )
        value = attrs.str.extract(_ATTR[extra], expand=False)
        out[extra] = strip_version(value) if extra == "transcript_id" else value
        return out

    if genes:
        g = table(genes, "gene_name")
        g["gene_name"] = g["gene_name"].fillna(g["gene_id"])
    else:  # a transcript-only GTF: one gene spanning its transcripts
        t = table(transcripts, "gene_name")
        g = (
            t.groupby("gene_id", sort=False)
            .agg(
                chrom=("chrom", "first"),
                start=("start", "min"),
                end=("end", "max"),
                strand=("strand", "first"),
                gene_name=("gene_name", "first"),
            )
            .reset_index()
        )
        g["gene_name"] = g["gene_name"].fillna(g["gene_id"])
    tx = table(transcripts, "transcript_id")[TRANSCRIPT_COLUMNS] if transcripts else None
    return _clean_genes(path, g[GENE_COLUMNS]), tx


def _clean_genes(path: str | Path, genes: pd.DataFrame) -> pd.DataFrame:
    genes = genes.reset_index(drop=True).copy()
    genes["chrom"] = genes["chrom"].astype(str)
    genes["start"] = genes["start"].astype(np.int64)
    genes["end"] = genes["end"].astype(np.int64)
    bad = (genes["start"] < 0) | (genes["end"] <= genes["start"])
    bad |= ~genes["strand"].isin(["+", "-"])
    if bad.any():
        row = genes[bad].iloc[0].to_dict()
        raise ScfmInputError(
            path,
            "genes",
            f"{int(bad.sum())} invalid records, e.g. {row}",
            "start >= 0, end > start and strand '+' or '-'",
        )
    return genes


# ----------------------------------------------------------------------------- chrom names
@dataclass
class ChromMapping:
    """How the chromosome names of a file map onto a genome.

    Attributes
    ----------
    mapping
        File name -> genome name, for every name that is kept (identity included).
    dropped
        Names deliberately dropped: alt/unplaced/random contigs, decoys, EBV (and names the
        user mapped to ``None`` / ``""``). Fragments on them are not an error.
    unknown
        Names that look like real chromosomes but are absent from the genome and not mapped.
    """

    mapping: dict[str, str]
    dropped: list[str]
    unknown: list[str]

    def __getitem__(self, name: str) -> str | None:
        return self.mapping.get(name)


def _aliases(name: str) -> list[str]:
    """Candidate spellings of ``name`` in another naming convention (UCSC <-> Ensembl)."""
    if name in MITO_NAMES:
        return ["chrM", "MT", "chrMT", "M"]
    if name.lower().startswith("chr"):
        return [name[3:]]
    return ["chr" + name]


def harmonize_chrom(
    names: Iterable[str], genome: Genome, chrom_map: Mapping[str, str | None] | None = None
) -> ChromMapping:
    """Map chromosome ``names`` (as found in a file) onto ``genome``'s names.

    Rules, in order: the user's ``chrom_map`` (a value of ``None`` or ``""`` drops the name);
    an exact match; the other convention's spelling (``1`` <-> ``chr1``, ``MT``/``M`` <->
    ``chrM``); alt haplotypes, fixes, random/unplaced contigs (``chr1_KI270706v1_random``,
    ``GL000218.1``, ``chrUn_*``), decoys, EBV, HLA and spike-ins are **dropped** (they are not
    part of the primary assembly our bins and peaks cover); anything else is ``unknown`` (the
    caller decides; :func:`scfm.atac.fragments.prepare_fragments` refuses such files).
    """
    chrom_map = dict(chrom_map or {})
    mapping: dict[str, str] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for name in dict.fromkeys(names):
        if name in chrom_map:
            target = chrom_map[name]
            if not target:
                dropped.append(name)
            elif target in genome.chrom_sizes:
                mapping[name] = target
            else:
                raise ValueError(f"chrom_map maps {name!r} to {target!r}, not in genome")
        elif name in genome.chrom_sizes:
            mapping[name] = name
        elif alias := next((a for a in _aliases(name) if a in genome.chrom_sizes), None):
            mapping[name] = alias
        elif _NON_PRIMARY.search(name):
            dropped.append(name)
        else:
            unknown.append(name)
    targets = pd.Series(list(mapping.values()))
    if targets.duplicated().any():
        dup = sorted(set(targets[targets.duplicated()]))
        raise ValueError(f"several names map onto the same chromosome(s) {dup}: {mapping}")
    return ChromMapping(mapping, dropped, unknown)


# ----------------------------------------------------------------------------- load / write
def load_genome(
    chrom_sizes: str | Path | Mapping[str, int],
    annotation: str | Path | None = None,
    *,
    name: str | None = None,
    chrom_map: Mapping[str, str | None] | None = None,
) -> Genome:
    """Build a :class:`Genome` from chromosome sizes and an optional gene annotation.

    ``chrom_sizes`` is a path, a mapping, or a built-in assembly name (``"hg38"``, ``"mm10"``).
    Annotation chromosome names are harmonised onto the genome (:func:`harmonize_chrom`);
    genes on dropped or unknown contigs are left out and counted in the log.
    """
    if isinstance(chrom_sizes, Mapping):
        sizes = {str(k): int(v) for k, v in chrom_sizes.items()}
    elif str(chrom_sizes) in BUILTIN_ASSEMBLIES and not Path(chrom_sizes).exists():
        sizes = builtin_chrom_sizes(str(chrom_sizes))
        name = name or str(chrom_sizes)
    else:
        sizes = read_chrom_sizes(chrom_sizes)
    genome = Genome(name=name or "genome", chrom_sizes=sizes)
    if annotation is None:
        return genome
    genes, transcripts = read_gene_annotation(annotation)
    sibling = Path(annotation).with_name("transcripts.tsv")
    if transcripts is None and Path(annotation).name == "genes.tsv" and sibling.is_file():
        transcripts = _read_scfm_table(sibling, TRANSCRIPT_COLUMNS)
    genome.genes = _restrict(genes, genome, chrom_map, str(annotation), "genes")
    if transcripts is not None:
        genome.transcripts = _restrict(transcripts, genome, chrom_map, str(annotation), "tx")
    return genome


def _restrict(
    table: pd.DataFrame, genome: Genome, chrom_map: Mapping | None, source: str, what: str
) -> pd.DataFrame:
    cm = harmonize_chrom(table["chrom"].unique(), genome, chrom_map)
    chrom = table["chrom"].map(cm.mapping)
    keep = chrom.notna().to_numpy()
    if not keep.all():
        log.info(
            "%s: %d %s on %d contigs not in genome %s left out (dropped %s; unknown %s)",
            source,
            int((~keep).sum()),
            what,
            len(cm.dropped) + len(cm.unknown),
            genome.name,
            cm.dropped[:5],
            cm.unknown[:5],
        )
    out = table[keep].copy()
    out["chrom"] = chrom[keep].to_numpy()
    out = out[out["end"] <= out["chrom"].map(genome.chrom_sizes)]
    return _sort_by_genome(out, genome.chroms, "start")


def write_genome(genome: Genome, directory: str | Path) -> Path:
    """Write ``chrom.sizes``, ``genes.tsv`` (and ``transcripts.tsv`` if any) into ``directory``.

    ``genes.tsv`` is tab-separated with the first line :data:`GENES_TSV_MAGIC`, then a header
    ``chrom start end strand gene_id gene_name``; coordinates 0-based half-open.
    ``transcripts.tsv`` has the same layout with ``transcript_id`` for ``gene_name``.
    :func:`load_genome` with both paths (or :func:`read_genome` with the directory) reads it
    back, picking up ``transcripts.tsv`` beside ``genes.tsv``. Each file is written atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "chrom.sizes") as tmp:
        tmp.write_text("".join(f"{c}\t{n}\n" for c, n in genome.chrom_sizes.items()))
    for fname, table, cols in (
        ("genes.tsv", genome.genes, GENE_COLUMNS),
        ("transcripts.tsv", genome.transcripts, TRANSCRIPT_COLUMNS),
    ):
        if table is None:
            continue
        with atomic_path(directory / fname) as tmp, tmp.open("w") as fh:
            fh.write(GENES_TSV_MAGIC + "\n")
            table[cols].to_csv(fh, sep="\t", index=False)
    return directory


def read_genome(directory: str | Path, *, name: str | None = None) -> Genome:
    """Read a genome directory written by :func:`write_genome`."""
    directory = Path(directory)
    return load_genome(
        directory / "chrom.sizes", directory / "genes.tsv", name=name or directory.name
    )


def _read_scfm_table(path: Path, columns: list[str]) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", skiprows=1, dtype={"chrom": str})
    _check_columns(path, table, columns)
    return table[columns]


def write_tss_gtf(genome: Genome, path: str | Path, *, level: str = "auto") -> Path:
    """Write a minimal GTF with one ``transcript`` record per TSS of ``genome.tss(level)``.

    For peers that read TSSs from a GTF (SnapATAC2's ``metrics.tsse``): each record spans 1 bp
    at the TSS so every reader derives the same TSS set as :meth:`Genome.tss`.
    """
    tss = genome.tss(level=level)  # type: ignore[arg-type]
    rows = tss[["chrom", "position", "strand", "gene_id"]].itertuples(index=False)
    lines = [
        f"{c}\tscfm\ttranscript\t{p + 1}\t{p + 1}\t.\t{s}\t.\t"
        f'gene_id "{g}"; transcript_id "T{i}";\n'
        for i, (c, p, s, g) in enumerate(rows)
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines))
    return Path(path)
