"""Snakemake adapter: rule atac_summits -> scfm.atac.peaks.call_peaks (MACS3 pseudobulk)."""

from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.peaks import call_peaks
from scfm.atac.pipeline import genome_from_files, kept_barcodes
from scfm.atomic import atomic_path
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
out = Path(snakemake.output.summits)
summits = call_peaks(
    [snakemake.input.fragments],
    genome_from_files(snakemake.input.chrom_sizes, snakemake.input.genes),
    out.parent / "macs3",
    barcodes=kept_barcodes(snakemake.input.barcodes),
    qvalue=snakemake.params.qc["peak_qvalue"],
)
with atomic_path(out, suffix=".bed") as tmp:
    tmp.write_bytes(Path(summits).read_bytes())
