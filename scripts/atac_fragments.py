"""Snakemake adapter: rule atac_fragments -> scfm.atac.pipeline.fragments."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import fragments
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
fragments(
    snakemake.input.manifest,
    snakemake.input.chrom_sizes,
    snakemake.input.genes,
    snakemake.output.fragments,
    cfg=snakemake.params.dataset,
    blacklist=snakemake.input.get("blacklist"),
)
register_outputs(snakemake, kind="standard")  # no-op unless registry.enabled
