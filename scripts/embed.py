"""Snakemake adapter: rule embed -> scfm.embed.embed_file (a trained run on an evaluation set)."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.embed import embed_file
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
embed_file(
    snakemake.input.model,
    snakemake.input.data,
    snakemake.output.h5ad,
    key=f"X_{snakemake.wildcards.method}",
    batch_size=snakemake.params.bench["batch_size"],
    gene_stats=snakemake.input.get("gene_stats"),
)
register_outputs(snakemake, kind="embedding")  # no-op unless registry.enabled
