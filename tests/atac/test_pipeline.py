"""The rule-level scATAC functions: clear errors, nothing written on bad barcode metadata."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from scfm.atac.pipeline import barcode_qc
from scfm.errors import ScfmInputError

QC = {"min_fragments": 500, "min_tsse": 4, "max_frac_mito": 0.2, "max_nucleosome_signal": None}


def _run(sim_atac, tmp_path, cfg):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {"format": "fragments", "defaults": {}, "matrices": [{"path": str(sim_atac.fragments)}]}
        )
    )
    outs = [tmp_path / "out" / n for n in ("qc.tsv", "barcodes.tsv", "qc.png")]
    barcode_qc(
        sim_atac.fragments,
        sim_atac.genome_dir / "chrom.sizes",
        sim_atac.genome_dir / "genes.tsv",
        manifest,
        *outs,
        dataset="d",
        cfg=cfg,
        qc=QC,
    )
    return outs


def test_metadata_gives_obs_and_qc_keeps_cells(sim_atac, tmp_path):
    meta = tmp_path / "meta.tsv"
    sim_atac.metadata.to_csv(meta, sep="\t", index=False)
    cfg = {"barcodes": str(meta), "obs_map": {"cell_type": "cell_type", "batch": "batch"}}
    _, kept, png = _run(sim_atac, tmp_path, cfg)
    obs = pd.read_csv(kept, sep="\t", index_col="barcode")
    truth = sim_atac.metadata.set_index("barcode")
    assert (obs["cell_type"] == truth.loc[obs.index, "cell_type"]).all()
    assert truth.loc[obs.index, "is_cell"].mean() > 0.95  # QC removes the low-quality barcodes
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.assign(barcode="X" + m["barcode"]), "none of the .* listed barcodes"),
        (lambda m: m.rename(columns={"cell_type": "celltype"}), r"obs_map names \['cell_type'\]"),
        (lambda m: m.drop(columns="barcode"), "no 'barcode' column"),
    ],
)
def test_bad_barcode_metadata_is_named_and_nothing_is_written(sim_atac, tmp_path, change, match):
    meta = tmp_path / "meta.tsv"
    change(sim_atac.metadata).to_csv(meta, sep="\t", index=False)
    cfg = {"barcodes": str(meta), "obs_map": {"cell_type": "cell_type"}}
    with pytest.raises(ScfmInputError, match=match) as err:
        _run(sim_atac, tmp_path, cfg)
    assert str(meta) in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
