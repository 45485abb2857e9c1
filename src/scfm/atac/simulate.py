"""A small scATAC simulator with the structure real data has, for the offline demo and tests.

:func:`simulate_genome` makes a deterministic synthetic genome (``chr1..chrN`` plus ``chrM``,
genes ``SIMATAC00001..`` with strands and TSSs). :func:`simulate_fragments` writes a sorted,
BGZF-compressed, tabix-indexed fragment file on it and returns per-barcode metadata.

What the fragments carry, so every QC metric and embedding has something to find:

- **Cell types** differ in accessibility: each accessible region (all promoters plus distal
  sites, ~5 per gene) is shared, or specific to one type (x2-2.5 there, x0.4 elsewhere; 30% of
  promoters, 50% of distal sites), so gene activity differs between types too. Pseudobulks of
  two types correlate ~0.75 over 500 bp bins; LSI on 500 bp bins separates the types.
- **TSS enrichment**: promoter regions are centred on TSSs and are the strongest regions, so
  insertions pile up at TSSs over a flat background (good cells: SnapATAC2 TSSe ~6-20).
- **Nucleosome ladder**: fragment lengths are a mixture of nucleosome-free (< 147 bp, mode
  ~60 bp), mono- (~200 bp), di- (~400 bp) and tri-nucleosome (~600 bp) fragments; accessible
  regions are enriched for nucleosome-free fragments, the background for nucleosomal ones.
- **Low-quality barcodes** (``cell_type == "low_quality"``, ``is_cell == False``; a
  ``frac_low_quality`` share on top of ``n_cells``): few fragments, mostly background (low
  TSSe, high nucleosome signal), many mitochondrial -- QC should remove them.
- **Mitochondrial fragments** on ``chrM`` when the genome has it (1-5% for cells).
- **Batch effect**: batches differ in sequencing depth and in the fraction of fragments in
  accessible regions (signal-to-noise); each batch has its own two donors.
- **PCR duplicates**: a count column of ``1 + Poisson(0.4)``.

Identical fragments of one barcode are merged (counts summed), as in a real fragment file.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from scfm.atac.fragments import FragmentBlock, write_fragments
from scfm.atac.genome import GENE_COLUMNS, Genome

MITO_LENGTH = 16_569  # human chrM
_DEPTH = (1.0, 1.45, 0.85, 1.25)  # per-batch depth factors (cycled)
_SIGNAL = (0.0, -0.1, 0.05, -0.05)  # per-batch shift of the fraction in accessible regions
# nucleosomal fragment-length classes (mono, di, tri): (mean, sd) of a normal
_NUCLEOSOMAL = ((200, 24), (395, 32), (590, 42))


def simulate_genome(
    seed: int = 0,
    n_chroms: int = 3,
    chrom_size: int = 1_500_000,
    n_genes: int | None = None,
    *,
    mito: bool = True,
    name: str = "sim",
) -> Genome:
    """A deterministic synthetic genome: ``n_chroms`` chromosomes of ``chrom_size`` bp.

    Genes (default one per 15 kb) are spread evenly, at least 5 kb from chromosome ends and
    apart, with random strands and lengths of 2-40 kb; ids ``SIMATAC00001``..., names
    ``SimGene1``.... ``mito`` adds a 16,569 bp ``chrM`` without genes.
    """
    rng = np.random.default_rng([seed, 7])
    n_genes = n_genes if n_genes is not None else max(1, n_chroms * chrom_size // 15_000)
    sizes = {f"chr{i + 1}": int(chrom_size) for i in range(n_chroms)}
    per_chrom = np.bincount(np.arange(n_genes) % n_chroms, minlength=n_chroms)
    rows = []
    for ci, (chrom, n) in enumerate(zip(sizes, per_chrom, strict=True)):
        if n == 0:
            continue
        slot = (chrom_size - 10_000) // n
        if slot < 4_000:
            raise ValueError(f"{n} genes do not fit on {chrom_size} bp; lower n_genes")
        lo = 5_000 + np.arange(n) * slot
        length = np.minimum(np.exp(rng.uniform(np.log(2_000), np.log(40_000), n)), slot - 2_000)
        start = lo + rng.integers(0, np.maximum(slot - length - 1_000, 1)).astype(np.int64)
        strand = rng.choice(["+", "-"], n)
        rows.append(
            pd.DataFrame(
                {
                    "chrom": chrom,
                    "start": start,
                    "end": start + length.astype(np.int64),
                    "strand": strand,
                    "ci": ci,
                }
            )
        )
    genes = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=GENE_COLUMNS)
    genes = genes.sort_values(["ci", "start"], kind="stable").reset_index(drop=True)
    genes["gene_id"] = [f"SIMATAC{i + 1:05d}" for i in range(len(genes))]
    genes["gene_name"] = [f"SimGene{i + 1}" for i in range(len(genes))]
    if mito:
        sizes["chrM"] = MITO_LENGTH
    return Genome(name=name, chrom_sizes=sizes, genes=genes[GENE_COLUMNS])


def _lengths(rng: np.random.Generator, n: int, frac_nfr: float) -> np.ndarray:
    """Fragment lengths with a nucleosome ladder; ``frac_nfr`` are nucleosome-free.

    Classes overlap a little at their borders, as in real data (no clipping at 147 bp).
    """
    weights = np.array([frac_nfr, *((1 - frac_nfr) * np.array([0.68, 0.24, 0.08]))])
    kind = rng.choice(4, n, p=weights)
    length = np.exp(rng.normal(np.log(62), 0.38, n))  # nucleosome-free, mode ~55 bp
    for k, (mean, sd) in enumerate(_NUCLEOSOMAL, start=1):
        m = kind == k
        length[m] = rng.normal(mean, sd, m.sum())
    return np.clip(length, 15, 1000).astype(np.int64)


def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < n:
        codes = rng.integers(0, 4, (n - len(seen), 16))
        for row in codes:
            seen.setdefault("".join("ACGT"[i] for i in row) + "-1", None)
    return list(seen)


def simulate_fragments(
    genome: Genome,
    out: str | Path,
    *,
    n_cells: int = 1500,
    n_types: int = 5,
    n_batches: int = 2,
    seed: int = 0,
    fragments_per_cell: int = 2000,
    frac_low_quality: float = 0.1,
    frac_accessible: float = 0.55,
    distal_per_gene: float = 5.0,
) -> pd.DataFrame:
    """Write a simulated fragment file ``out`` (BGZF + ``.tbi``) and return barcode metadata.

    Parameters
    ----------
    genome
        Typically :func:`simulate_genome`; needs genes on its nuclear chromosomes.
    out
        The fragment file to write (atomically, with its tabix index).
    n_cells, n_types, n_batches
        Real cells, cell types (unequal proportions) and batches (two donors each).
    seed
        The same seed and arguments give the same file.
    fragments_per_cell
        Median unique fragments of a real cell (log-normal, scaled per batch).
    frac_low_quality
        Low-quality barcodes added on top of ``n_cells``, as a fraction of it.
    frac_accessible
        Mean fraction of a real cell's fragments in accessible regions (shifted per batch).
    distal_per_gene
        Distal accessible regions per gene (the promoters are accessible regions too).

    Returns
    -------
    DataFrame with one row per barcode: ``barcode, cell_type, batch, donor, is_cell``.
    """
    rng = np.random.default_rng([seed, 11])
    nuclear = [c for c in genome.chrom_sizes if c not in genome.mito_chroms]
    mito = genome.mito_chroms[0] if genome.mito_chroms else None
    cidx = {c: i for i, c in enumerate(genome.chrom_sizes)}
    sizes = np.array([genome.chrom_sizes[c] for c in genome.chrom_sizes], np.int64)
    tss = genome.tss(level="gene")
    tss = tss[tss["chrom"].isin(nuclear)]
    if tss.empty:
        raise ValueError(f"genome {genome.name!r} has no genes on nuclear chromosomes")

    # accessible regions: promoters (centred on the TSS) and distal sites
    n_prom = len(tss)
    n_distal = round(distal_per_gene * n_prom)
    nuc_sizes = np.array([genome.chrom_sizes[c] for c in nuclear], np.float64)
    d_chrom = rng.choice(len(nuclear), n_distal, p=nuc_sizes / nuc_sizes.sum())
    d_pos = (rng.random(n_distal) * (nuc_sizes[d_chrom] - 2_000) + 1_000).astype(np.int64)
    reg_chrom = np.r_[tss["chrom"].map(cidx).to_numpy(), [cidx[nuclear[i]] for i in d_chrom]]
    reg_pos = np.r_[tss["position"].to_numpy(np.int64), d_pos]
    is_prom = np.r_[np.ones(n_prom, bool), np.zeros(n_distal, bool)]
    strength = np.exp(rng.normal(0, 0.5, len(reg_pos))) * np.where(is_prom, 3.0, 1.0)
    owner = rng.integers(0, n_types, len(reg_pos))
    specific = rng.random(len(reg_pos)) < np.where(is_prom, 0.3, 0.5)
    own = np.arange(n_types)[:, None] == owner[None, :]
    spec = np.where(specific, np.where(own, np.where(is_prom, 2.0, 2.5), 0.4), 1.0)
    weights = strength[None, :] * spec
    weights /= weights.sum(axis=1, keepdims=True)

    # barcodes: real cells and low-quality barcodes
    n_low = round(frac_low_quality * n_cells)
    n_bc = n_cells + n_low
    good = np.r_[np.ones(n_cells, bool), np.zeros(n_low, bool)]
    props = 1 / np.sqrt(np.arange(1, n_types + 1))
    ctype = rng.choice(n_types, n_bc, p=props / props.sum())
    batch = rng.integers(0, n_batches, n_bc)
    donor = 2 * batch + rng.integers(0, 2, n_bc)
    depth = np.array([_DEPTH[b % len(_DEPTH)] for b in batch])
    signal = np.array([_SIGNAL[b % len(_SIGNAL)] for b in batch])
    n_frag = np.where(
        good,
        np.exp(rng.normal(np.log(fragments_per_cell), 0.3, n_bc)) * depth,
        np.clip(np.exp(rng.normal(np.log(250), 0.6, n_bc)), 30, 900),
    ).astype(np.int64)
    frac_acc = np.where(
        good,
        np.clip(rng.normal(frac_accessible, 0.06, n_bc) + signal, 0.15, 0.9),
        rng.uniform(0.02, 0.1, n_bc),
    )
    frac_mt = np.where(good, rng.uniform(0.01, 0.05, n_bc), rng.uniform(0.05, 0.5, n_bc))
    if mito is None:
        frac_mt[:] = 0
    n_acc = rng.binomial(n_frag, frac_acc)
    n_mt = rng.binomial(n_frag - n_acc, frac_mt)
    n_bg = n_frag - n_acc - n_mt

    # accessible-region fragments: NFR ones centred tightly, nucleosomal ones around
    cell = np.repeat(np.arange(n_bc), n_acc)
    region = np.empty(len(cell), np.int64)
    for t in range(n_types):
        m = ctype[cell] == t
        region[m] = rng.choice(len(reg_pos), int(m.sum()), p=weights[t])
    length = _lengths(rng, len(cell), frac_nfr=0.62)
    spread = np.where(length < 147, 45.0, 110.0)
    mid = reg_pos[region] + np.round(rng.normal(0, 1, len(cell)) * spread).astype(np.int64)
    parts = [(reg_chrom[region], mid - length // 2, length, cell)]
    # background: uniform over the nuclear genome, mostly nucleosomal
    cell = np.repeat(np.arange(n_bc), n_bg)
    chrom = rng.choice(len(nuclear), len(cell), p=nuc_sizes / nuc_sizes.sum())
    length = _lengths(rng, len(cell), frac_nfr=0.3)
    start = (rng.random(len(cell)) * (nuc_sizes[chrom] - length)).astype(np.int64)
    parts.append(
        (np.array([cidx[nuclear[i]] for i in range(len(nuclear))])[chrom], start, length, cell)
    )
    if mito is not None:
        cell = np.repeat(np.arange(n_bc), n_mt)
        length = np.clip(np.exp(rng.normal(np.log(150), 0.6, len(cell))), 25, 1000).astype(int)
        start = (rng.random(len(cell)) * (genome.chrom_sizes[mito] - length)).astype(np.int64)
        parts.append((np.full(len(cell), cidx[mito]), start, length, cell))

    chrom = np.concatenate([p[0] for p in parts]).astype(np.int64)
    length = np.concatenate([p[2] for p in parts]).astype(np.int64)
    start = np.clip(np.concatenate([p[1] for p in parts]), 0, sizes[chrom] - length)
    end = start + length
    cell = np.concatenate([p[3] for p in parts]).astype(np.int64)
    count = 1 + rng.poisson(0.4, len(cell))
    _write(out, genome, chrom, start, end, cell, count, barcodes := _barcodes(rng, n_bc))

    types = np.array([f"type{t}" for t in range(n_types)], dtype=object)
    meta = pd.DataFrame(
        {
            "barcode": barcodes,
            "cell_type": np.where(good, types[ctype], "low_quality"),
            "batch": [f"batch{b}" for b in batch],
            "donor": [f"donor{d}" for d in donor],
            "is_cell": good,
        }
    )
    return meta.iloc[rng.permutation(n_bc)].reset_index(drop=True)


def _write(
    out: str | Path,
    genome: Genome,
    chrom: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    cell: np.ndarray,
    count: np.ndarray,
    barcodes: list[str],
) -> None:
    """Sort, merge identical fragments of a barcode (summing counts), write BGZF + index."""
    length = end - start
    span = [
        int(sizes) for sizes in (chrom.max() + 1, start.max() + 1, length.max() + 1, cell.max() + 1)
    ]
    if np.prod(np.array(span, dtype=object)) < 2**63:  # one int64 key sorts ~4x faster
        key = ((chrom * span[1] + start) * span[2] + length) * span[3] + cell
        order = np.argsort(key, kind="stable")
    else:
        order = np.lexsort((cell, end, start, chrom))
    chrom, start, end, cell, count = (a[order] for a in (chrom, start, end, cell, count))
    new = np.r_[
        True,
        (np.diff(chrom) != 0) | (np.diff(start) != 0) | (np.diff(end) != 0) | (np.diff(cell) != 0),
    ]
    first = np.flatnonzero(new)
    count = np.add.reduceat(count, first)
    chrom, start, end, cell = chrom[first], start[first], end[first], cell[first]
    names = list(genome.chrom_sizes)
    bounds = np.searchsorted(chrom, np.arange(len(names) + 1))
    blocks = (
        FragmentBlock(names[c], start[lo:hi], end[lo:hi], cell[lo:hi], count[lo:hi])
        for c, (lo, hi) in enumerate(itertools.pairwise(bounds))
        if hi > lo
    )
    write_fragments(out, blocks, barcodes)
