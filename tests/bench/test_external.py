"""External methods (precomputed files and commands) joined to an evaluation set by cell ID."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm.bench.evalset import prepare_evalset
from scfm.bench.external import (
    ExternalMethodError,
    command_args,
    external_embedding,
    read_external,
)
from scfm.config import validate_config
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.io.embedding import read_embedding
from scfm.io.h5ad import provenance
from scfm.io.simulate import simulate_counts

# A command a lab might run: the first 8 principal components of log1p counts, written as an
# embedding file (numpy only, so it runs in any interpreter with anndata).
PCA_ONE_LINER = (
    "import sys, anndata as ad, numpy as np; a = ad.read_h5ad(sys.argv[1]); "
    "x = np.log1p(a.X.toarray()); x -= x.mean(0); "
    "u, s, vt = np.linalg.svd(x, full_matrices=False); "
    "e = (u[:, :8] * s[:8]).astype('float32'); "
    "ad.AnnData(obs=a.obs[[]], obsm=dict(X_pca8=e)).write_h5ad(sys.argv[2])"
)


@pytest.fixture(scope="module")
def evalset(tmp_path_factory) -> Path:
    sim = simulate_counts(n_cells=300, n_genes=400, seed=5)
    del sim.uns["simulation"]
    qc = tmp_path_factory.mktemp("qc") / "sim.h5ad"
    sim.write_h5ad(qc)
    out = qc.parent / "data.h5ad"
    prepare_evalset(
        qc, out, label_key="cell_type", batch_key="batch", n_hvg=100, max_cells=200, name="sim"
    )
    return out


def _cells(path: Path) -> pd.Index:
    return ad.read_h5ad(path, backed="r").obs_names


def _precomputed_h5ad(path: Path, ids, emb: np.ndarray, key: str = "X_fm") -> Path:
    ad.AnnData(obs=pd.DataFrame(index=pd.Index(ids, dtype=str)), obsm={key: emb}).write_h5ad(path)
    return path


def _snapshot(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_precomputed_h5ad_is_joined_by_cell_id(evalset, tmp_path):
    cells = _cells(evalset)
    rng = np.random.default_rng(0)
    # the lab embedded the whole dataset (more cells, another order)
    ids = np.array([f"c{i}" for i in range(50)] + list(cells))
    ids = ids[rng.permutation(len(ids))]
    emb = rng.normal(size=(len(ids), 12)).astype(np.float32)
    src = _precomputed_h5ad(tmp_path / "scgpt.h5ad", ids, emb)
    out = tmp_path / "out" / "scgpt.h5ad"
    spec = {"kind": "precomputed", "path": str(src), "allow_extra_cells": True, "n_dims": 12}
    external_embedding("scgpt", evalset, out, spec)
    got = read_embedding(out, "X_scgpt", obs_names=cells)
    want = emb[pd.Index(ids).get_indexer(cells)]
    np.testing.assert_array_equal(got, want)
    record = provenance(out)["external"]
    assert (
        record["kind"] == "precomputed" and record["n_dims"] == 12 and len(record["sha256"]) == 64
    )


def test_precomputed_parquet_with_cell_id_column(evalset, tmp_path):
    cells = _cells(evalset)
    emb = np.arange(len(cells) * 3, dtype=np.float64).reshape(-1, 3)
    table = pd.DataFrame(emb[::-1], columns=["d0", "d1", "d2"])
    table.insert(0, "barcode", list(cells[::-1]))
    src = tmp_path / "uce.parquet"
    table.to_parquet(src)
    out = tmp_path / "uce.h5ad"
    external_embedding(
        "uce", evalset, out, {"kind": "precomputed", "path": str(src), "cell_id": "barcode"}
    )
    np.testing.assert_array_equal(
        read_embedding(out, "X_uce", obs_names=cells), emb.astype(np.float32)
    )


def test_parquet_index_holds_cell_ids(evalset, tmp_path):
    cells = _cells(evalset)
    src = tmp_path / "e.parquet"
    pd.DataFrame({"a": np.ones(len(cells)), "b": np.zeros(len(cells))}, index=cells).to_parquet(src)
    ids, matrix = read_external(src)
    assert list(ids) == list(cells) and matrix.shape == (len(cells), 2)


def test_command_method_runs_without_a_shell(evalset, tmp_path):
    out = tmp_path / "dir with space" / "pca8.h5ad"
    out.parent.mkdir()
    log = tmp_path / "job.log"
    spec = {
        "kind": "command",
        "command": f'{sys.executable} -c "{PCA_ONE_LINER}" {{input}} {{output}}',
        "n_dims": 8,
    }
    external_embedding("pca8", evalset, out, spec, threads=1, log_file=log)
    emb = read_embedding(out, "X_pca8", obs_names=_cells(evalset))
    assert emb.shape == (200, 8) and np.abs(emb).sum() > 0
    assert _snapshot(out.parent) == {"pca8.h5ad"}  # the command's own file is gone


def test_command_args_fill_placeholders_per_argument():
    args = command_args(
        "embed --in {input} --out={output} -j {threads} '{{literal}}'",
        input="a b;$(x)",
        output="o",
        threads=4,
    )
    assert args == ["embed", "--in", "a b;$(x)", "--out=o", "-j", "4", "{literal}"]
    with pytest.raises(ValueError, match="placeholders among"):
        command_args("x {inpt}", input="a", output="b", threads=1)


BAD = {
    "missing cells": ("missing", r"of the evaluation set's 200 cells are missing, first"),
    "extra cells": ("extra", r"1 cell\(s\) not in the evaluation set, first 'stranger'"),
    "duplicated ids": ("dup", r"duplicated cell ID"),
    "nan rows": ("nan", r"2 cell\(s\) with NaN or infinite values"),
    "wrong width": ("dims", r"12 dimensions; expected n_dims = 16"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_precomputed_files_fail_naming_method_and_file(evalset, tmp_path, case):
    what, message = BAD[case]
    cells = list(_cells(evalset))
    emb = np.ones((len(cells), 12), dtype=np.float32)
    if what == "missing":
        cells, emb = cells[5:], emb[5:]
    elif what == "extra":
        cells, emb = [*cells, "stranger"], np.ones((len(cells) + 1, 12), np.float32)
    elif what == "dup":
        cells[1] = cells[0]
    elif what == "nan":
        emb[[3, 7], 2] = [np.nan, np.inf]
    src = _precomputed_h5ad(tmp_path / "fm.h5ad", cells, emb)
    before = src.read_bytes()
    out = tmp_path / "out" / "fm.h5ad"
    spec = {"kind": "precomputed", "path": str(src), "n_dims": 16 if what == "dims" else None}
    with pytest.raises(ScfmInputError, match=message) as err:
        external_embedding("fm", evalset, out, spec)
    assert str(src) in str(err.value) and "'fm'" in str(err.value)
    assert not out.exists() and (not out.parent.exists() or not list(out.parent.iterdir()))
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import sys; sys.exit(3)", r"method 'bad': command exited with status 3"),
        ("pass", r"method 'bad': command exited 0 but wrote nothing"),
    ],
)
def test_failing_commands_write_nothing(evalset, tmp_path, code, message):
    out = tmp_path / "out" / "bad.h5ad"
    out.parent.mkdir()
    spec = {"kind": "command", "command": f'{sys.executable} -c "{code}" {{input}} {{output}}'}
    with pytest.raises(ExternalMethodError, match=message):
        external_embedding("bad", evalset, out, spec, log_file=tmp_path / "job.log")
    assert list(out.parent.iterdir()) == []


def test_unknown_program_is_named(evalset, tmp_path):
    spec = {"kind": "command", "command": "no-such-embedder {input} {output}"}
    with pytest.raises(ExternalMethodError, match="'no-such-embedder' not found"):
        external_embedding("x", evalset, tmp_path / "x.h5ad", spec)


def test_h5ad_with_several_matrices_needs_obsm_key(evalset, tmp_path):
    cells = _cells(evalset)
    src = tmp_path / "two.h5ad"
    ad.AnnData(
        obs=pd.DataFrame(index=cells),
        obsm={"X_a": np.ones((len(cells), 2)), "X_b": np.zeros((len(cells), 3))},
    ).write_h5ad(src)
    with pytest.raises(ScfmInputError, match=r"obsm: 2 matrices .* set obsm_key"):
        read_external(src)
    _, matrix = read_external(src, obsm_key="X_b")
    assert matrix.shape == (len(cells), 3)


def test_precomputed_file_that_is_the_output_is_refused(evalset, tmp_path):
    cells = _cells(evalset)
    src = _precomputed_h5ad(tmp_path / "fm.h5ad", cells, np.ones((len(cells), 4), np.float32))
    before = src.read_bytes()
    with pytest.raises(ScfmInputError, match=r"output: is the path file .* would replace"):
        external_embedding("fm", evalset, src, {"kind": "precomputed", "path": str(src)})
    assert src.read_bytes() == before


def test_precomputed_fifo_is_named_at_config_time(tmp_path):
    fifo = tmp_path / "fm.parquet"
    os.mkfifo(fifo)
    config = {
        "datasets": {"a": {"source": "demo", "demo": "pbmc68k"}},
        "benchmarks": {
            "e": {
                "dataset": "a",
                "methods": ["fm"],
                "external": {"fm": {"kind": "precomputed", "path": str(fifo)}},
            }
        },
    }
    with pytest.raises(ScfmConfigError, match=r"benchmarks.e.external.fm.path: .* is a FIFO"):
        validate_config(config)
