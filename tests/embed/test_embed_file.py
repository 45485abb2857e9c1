"""embed_file and ``scfm embed``: output contract, provenance, atomic writes, exit status 2."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm import __version__
from scfm.cli import main
from scfm.embed import embed_anndata, embed_file
from scfm.errors import ScfmInputError
from scfm.io.download import hash_file
from scfm.io.h5ad import provenance


def write_float_counts(adata: ad.AnnData, path: Path) -> Path:
    X = adata.X.astype(np.float32).tocsr()
    X.data[7] = 2.5
    adata.X = X
    adata.write_h5ad(path)
    return path


def test_embed_file_writes_obs_obsm_and_provenance(adata, corpus, trained: Path, tmp_path: Path):
    out = tmp_path / "emb" / "a.h5ad"
    record = embed_file(trained, corpus["h5ad"], out, chunk_cells=40, batch_size=16)
    result = ad.read_h5ad(out)
    assert result.shape == (adata.n_obs, 0)
    assert list(result.obs_names) == list(adata.obs_names)
    pd.testing.assert_frame_equal(result.obs, adata.obs)
    assert list(result.obsm) == ["X_tinyrun"]  # the model's directory names the run
    expected, _ = embed_anndata(adata, trained, progress=False)
    np.testing.assert_array_equal(result.obsm["X_tinyrun"], expected)
    prov = provenance(out)["embed"]
    # the duration is returned and logged but not written: the file depends on its inputs only
    assert record.pop("seconds") >= 0 and "seconds" not in prov
    assert prov == record
    assert prov["model_sha256"] == hash_file(trained)
    assert prov["model"] == str(trained) and prov["input"] == str(corpus["h5ad"])
    assert prov["vocab_hash"] and prov["step"] == 20 and prov["run"] == "tinyrun"
    assert prov["n_genes_missing"] == 0 and prov["missing_count_fraction"] == 0.0
    assert prov["versions"]["scfm"] == __version__ and prov["key"] == "X_tinyrun"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.h5ad"]  # no temporary left


def test_embed_file_leaves_nothing_when_it_fails(adata, trained: Path, tmp_path: Path) -> None:
    bad = write_float_counts(adata, tmp_path / "float.h5ad")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ScfmInputError, match=r"non-integer value 2\.5"):
        embed_file(trained, bad, out_dir / "emb.h5ad")
    assert list(out_dir.iterdir()) == []


def test_embed_file_is_atomic_when_writing_fails(
    corpus, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "emb.h5ad"
    out.parent.mkdir()
    out.write_text("previous result")

    def killed(self: ad.AnnData, path: Path, **kw: object) -> None:
        Path(path).write_bytes(b"half an h5ad")
        raise KeyboardInterrupt  # the job is killed mid-write

    monkeypatch.setattr(ad.AnnData, "write_h5ad", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_file(trained, corpus["h5ad"], out)
    assert [p.name for p in out.parent.iterdir()] == ["emb.h5ad"]
    assert out.read_text() == "previous result"


def test_cli_embeds_end_to_end(corpus, trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.h5ad"
    argv = ["embed", "--model", str(trained), "--input", str(corpus["h5ad"])]
    argv += ["--output", str(out), "--key", "X_mine", "--batch-size", "8", "--device", "cpu"]
    assert main([*argv, "--chunk-cells", "30"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(out)) and "obsm['X_mine']" in line
    assert "0 expressed genes missing" in line and "\n" not in line
    assert ad.read_h5ad(out).obsm["X_mine"].shape == (96, 32)


def test_cli_exits_2_naming_the_bad_input(adata, trained: Path, tmp_path: Path, capsys) -> None:
    bad = write_float_counts(adata, tmp_path / "float.h5ad")
    out = tmp_path / "never.h5ad"
    code = main(["embed", "--model", str(trained), "--input", str(bad), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "non-integer" in err
    assert "Traceback" not in err and not out.exists()


def test_cli_exits_2_when_no_gene_matches(adata, trained: Path, tmp_path: Path, capsys) -> None:
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.write_h5ad(tmp_path / "ensembl.h5ad")
    argv = ["embed", "--model", str(trained), "--input", str(tmp_path / "ensembl.h5ad")]
    assert main([*argv, "--output", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "ensembl.h5ad: var_names: none of the 60 genes" in err


def test_cli_exits_2_on_a_file_that_is_not_a_model(corpus, tmp_path: Path, capsys) -> None:
    h5ad = str(corpus["h5ad"])
    argv = ["embed", "--model", h5ad, "--input", h5ad, "--output", str(tmp_path / "o.h5ad")]
    assert main(argv) == 2
    assert f"{h5ad}: file: not loadable" in capsys.readouterr().err
