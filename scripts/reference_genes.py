"""Snakemake adapter: rule reference_genes -> scfm.io.genes (download or locate, then parse)."""

from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.io.download import download
from scfm.io.genes import read_gene_source, resolve_gene_source, write_gene_table
from scfm.logs import setup_logging
from scfm.paths import check_outputs_not_inputs

setup_logging(snakemake.log[0])
spec = snakemake.params.genes
out = Path(snakemake.output.table)
if spec.get("url"):
    src = out.parent / Path(spec["url"]).name
    download(spec["url"], src, sha256=spec["sha256"])
else:
    src = resolve_gene_source(spec)
    check_outputs_not_inputs({"output": out}, {"references.genes.path": src})
write_gene_table(read_gene_source(src, spec.get("format", "auto")), out)
