"""Evaluation sets built once per module from the real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from scfm.bench.evalset import prepare_evalset

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def cellbench(tmp_path_factory) -> tuple[Path, object]:
    """cellbench_5batch (992 cells, 5 batches, 5 cell lines) as an evaluation set."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (only CI and developer machines have ../shared)")
    out = tmp_path_factory.mktemp("cellbench") / "data.h5ad"
    adata = prepare_evalset(
        SHARED_DATA / "rna" / "cellbench_5batch.h5ad",
        out,
        label_key="cell_type",
        batch_key="batch",
        n_hvg=1000,
        name="cellbench",
    )
    return out, adata
