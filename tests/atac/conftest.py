"""Shared scATAC fixtures: the real files of ../shared/data/atac and a small simulated dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from scfm.atac.genome import Genome, load_genome, write_genome
from scfm.atac.simulate import simulate_fragments, simulate_genome

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ATAC = SHARED_DATA / "atac"
REFERENCE = SHARED_DATA / "reference"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (only CI and developer machines have ../shared)")
    return path


@pytest.fixture(scope="session")
def atac_dir() -> Path:
    """../shared/data/atac, or skip."""
    return _need(ATAC)


@pytest.fixture(scope="session")
def pbmc_fragments(atac_dir: Path) -> Path:
    """10x Multiome PBMC fragments (BGZF, sorted, .tbi; 367,439 fragments, GRCh38)."""
    return _need(atac_dir / "pbmc_multiome_fragments.tsv.gz")


@pytest.fixture(scope="session")
def signac_fragments(atac_dir: Path) -> Path:
    """Signac's 100-fragment example (chr1, BGZF + .tbi)."""
    return _need(atac_dir / "signac_tiny_fragments.tsv.gz")


@pytest.fixture(scope="session")
def bpcells_fragments(atac_dir: Path) -> Path:
    """BPCells' mini file: 4 columns, plain gzip, no index -- and hg19 coordinates."""
    return _need(atac_dir / "bpcells_mini_fragments.tsv.gz")


@pytest.fixture(scope="session")
def unsorted_fragments(atac_dir: Path) -> Path:
    """CELLxGENE's deliberately unsorted file with alt/unplaced contigs."""
    return _need(atac_dir / "cellxgene_unsorted_fragments.tsv.gz")


@pytest.fixture(scope="session")
def multiome_h5mu(atac_dir: Path) -> Path:
    """The paired RNA + ATAC MuData of the PBMC experiment (1,000 cells)."""
    return _need(atac_dir / "pbmc_multiome_1000cells.h5mu")


@pytest.fixture(scope="session")
def gencode_v22_tsv() -> Path:
    """GENCODE v22 genes (hg38) as a TSV with 1-based starts."""
    return _need(REFERENCE / "human_gencode_v22_genes_hg38.tsv.gz")


@pytest.fixture(scope="session")
def gencode_gtf() -> Path:
    """A real GENCODE v29 GTF excerpt (chr1:0-1.5 Mb)."""
    return _need(REFERENCE / "gencode_v29_chr1_0-1.5Mb.gtf.gz")


@pytest.fixture(scope="session")
def hg38_genome(gencode_v22_tsv: Path) -> Genome:
    """hg38 primary chromosomes with GENCODE v22 genes."""
    return load_genome("hg38", gencode_v22_tsv, name="hg38")


@dataclass
class SimATAC:
    """A small simulated scATAC dataset: genome, its files, fragments and barcode metadata."""

    genome: Genome
    genome_dir: Path  # chrom.sizes + genes.tsv (write_genome)
    fragments: Path  # BGZF + .tbi
    metadata: pd.DataFrame  # barcode, cell_type, batch, donor, is_cell


@pytest.fixture(scope="session")
def sim_atac(tmp_path_factory: pytest.TempPathFactory) -> SimATAC:
    """300 cells (+30 low-quality barcodes), 4 types, 2 batches on a 2 x 1 Mb genome (~1 s).

    Session-scoped and shared: treat the files as read-only.
    """
    root = tmp_path_factory.mktemp("sim_atac")
    genome = simulate_genome(seed=0, n_chroms=2, chrom_size=1_000_000)
    genome_dir = write_genome(genome, root / "genome")
    fragments = root / "fragments.tsv.gz"
    meta = simulate_fragments(
        genome, fragments, n_cells=300, n_types=4, n_batches=2, seed=0, fragments_per_cell=1500
    )
    return SimATAC(genome, genome_dir, fragments, meta)


@pytest.fixture(scope="session", autouse=True)
def _var_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Tile matrices cache their bins' var (scfm.atac.tiles.BinVar): in a temp directory here."""
    import os

    old = os.environ.get("SCFM_CACHE_DIR")
    os.environ["SCFM_CACHE_DIR"] = str(tmp_path_factory.mktemp("scfm_cache"))
    yield
    if old is None:
        os.environ.pop("SCFM_CACHE_DIR", None)
    else:
        os.environ["SCFM_CACHE_DIR"] = old
