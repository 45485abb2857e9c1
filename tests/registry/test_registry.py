"""The embedded registry: created on first use offline, lineage, versions, source, CLI, locks."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _helpers import Job, write

from scfm.cli import main as cli
from scfm.errors import ScfmInputError
from scfm.io.download import hash_file
from scfm.io.sources import fetch_dataset
from scfm.registry import (
    RegistrySettings,
    ScfmRegistryError,
    ScfmRegistryNotFound,
    fetch,
    lineage,
    list_records,
    register_files,
    register_outputs,
    show,
)
from scfm.registry._lock import LockTimeout, file_lock

pytest.importorskip("lamindb", reason="the registry tests need pip install 'scfm[registry]'")

CONFIG = {"datasets": {"d": {"source": "demo"}}, "registry": {"enabled": True}}


def standard_h5ad(path: Path, n: int = 30) -> Path:
    """A tiny file honouring the standard contract (counts, gene IDs, harmonised obs)."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "cell_type": rng.choice(["T", "B"], n),
            "batch": "b1",
            "donor": rng.choice(["d1", "d2"], n),
            "tissue": "blood",
            "assay": "10x",
            "dataset": "d",
        },
        index=[f"c{i}" for i in range(n)],
    ).astype("category")
    var = pd.DataFrame(
        {"gene_symbol": [f"G{i}" for i in range(20)]},
        index=pd.Index([f"ENSG{i:011d}" for i in range(20)], name="gene_id"),
    )
    x = sp.csr_matrix(rng.poisson(2, (n, 20)).astype(np.int32))
    path.parent.mkdir(parents=True, exist_ok=True)
    ad.AnnData(x, obs=obs, var=var).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """A working directory whose registry holds raw -> standard -> qc -> embedding -> table."""
    wd = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("home")
    s = RegistrySettings.from_config({"enabled": True}, workdir=wd)
    raw = standard_h5ad(wd / "resources/raw/d/d.h5ad")
    manifest = write(
        wd / "resources/raw/d/manifest.json",
        json.dumps(
            {
                "dataset": "d",
                "source": "url",
                "format": "h5ad",
                "matrices": [
                    {
                        "path": "resources/raw/d/d.h5ad",
                        "url": "https://example.org/d.h5ad",
                        "size": raw.stat().st_size,
                        "sha256": hash_file(raw),
                    }
                ],
                "defaults": {"obs_map": {"cell_type": "cell_type"}},
                "source_info": {"url": "https://example.org/d.h5ad"},
            }
        ),
    )
    steps = [
        ("raw", "download", [manifest], []),
        ("standard", "standardize", [standard_h5ad(wd / "results/standard/d.h5ad")], [manifest]),
    ]
    std = steps[1][2][0]
    qc = standard_h5ad(wd / "results/qc/d.h5ad", n=25)
    steps.append(("qc", "qc", [qc, write(wd / "results/qc/d.metrics.tsv", "x\n")], [std]))
    emb = write(wd / "results/embed/pca/s.h5ad", "embedding")
    steps.append(("embedding", "baseline", [emb], [qc]))
    table = write(wd / "results/bench/s/summary.tsv", "method\tscore\npca\t1\n")
    steps.append(("benchmark", "bench_summary", [table], [write(wd / "t.tsv", "metric\n")]))
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))  # lamindb must write nothing into the user's home
        for kind, rule, outs, ins in steps:
            lin = [emb] if kind == "benchmark" else []
            results[rule] = register_files(
                kind,
                outs,
                inputs=ins,
                lineage=lin,
                rule=rule,
                wildcards={"dataset": "d"},
                config=CONFIG,
                settings=s,
            )
    return {"wd": wd, "home": home, "settings": s, "results": results, "qc": qc, "raw": raw}


def test_first_use_creates_the_instance_inside_the_working_directory(lab):
    root = lab["wd"] / ".scfm-registry"
    assert (root / "storage" / ".lamindb" / "lamin.db").is_file()
    assert (root / "settings" / ".lamin" / "instance--anonymous--scfm.env").is_file()
    assert not list(lab["home"].iterdir())
    # files are registered in place (the working dir is a storage location), not copied
    assert not list((root / "storage" / ".lamindb").glob("*.h5ad"))
    rec = show(lab["settings"], "results/qc/d.h5ad")
    assert rec["path"] == str(lab["qc"]) and rec["run"]["rule"] == "qc"


def test_lineage_leads_from_a_table_to_the_raw_data(lab):
    tree = lineage(lab["settings"], "results/bench/s/summary.tsv")
    chain = []
    node = tree
    while node:
        chain.append((node["key"], node["rule"]))
        node = node["inputs"][0] if node["inputs"] else None
    assert chain == [
        ("results/bench/s/summary.tsv", "bench_summary"),
        ("results/embed/pca/s.h5ad", "baseline"),
        ("results/qc/d.h5ad", "qc"),
        ("results/standard/d.h5ad", "standardize"),
        ("resources/raw/d/manifest.json", "download"),
    ]
    raw = tree["inputs"][0]["inputs"][0]["inputs"][0]["inputs"][0]
    assert raw["info"]["source"] == "url"
    assert raw["info"]["matrices"][0]["url"] == "https://example.org/d.h5ad"
    assert raw["scfm_version"] and len(raw["config_hash"]) == 16
    # t.tsv was never registered: reported, not invented
    assert lab["results"]["bench_summary"]["unregistered_inputs"] == ["t.tsv"]


def test_list_and_show(lab):
    rows = list_records(lab["settings"], kind="qc")
    assert {r["key"] for r in rows} == {"results/qc/d.metrics.tsv", "results/qc/d.h5ad"}
    assert {r["rule"] for r in rows} == {"qc"}
    rec = show(lab["settings"], "results/qc/d.h5ad")
    assert [i["key"] for i in rec["inputs"]] == ["results/standard/d.h5ad"]
    assert "baseline" in {u["rule"] for u in rec["used_by"]}
    assert rec["run"]["wildcards"] == {"dataset": "d"}
    assert show(lab["settings"], rec["uid"][:16])["key"] == "results/qc/d.h5ad"
    with pytest.raises(ScfmRegistryNotFound, match="scfm registry list"):
        show(lab["settings"], "results/qc/none.h5ad")


def test_unchanged_outputs_are_not_registered_twice_and_changes_make_versions(lab):
    s, wd = lab["settings"], lab["wd"]
    table = wd / "results/bench/s/summary.tsv"
    first = lab["results"]["bench_summary"]["outputs"][0]
    again = register_files("benchmark", [table], rule="bench_summary", settings=s)
    assert again["outputs"][0] == {**first, "new": False}
    table.write_text("method\tscore\npca\t2\n")
    changed = register_files("benchmark", [table], rule="bench_summary", settings=s)
    new = changed["outputs"][0]
    assert new["new"] and new["uid"][:16] == first["uid"][:16] and new["uid"] != first["uid"]
    assert [v["uid"] for v in show(s, new["uid"])["versions"]] == [first["uid"], new["uid"]]
    with pytest.raises(ScfmRegistryError, match="no longer matches the registered version"):
        fetch(s, first["uid"])  # its file in the working dir was overwritten


def test_nothing_touches_the_network(lab, offline):
    s = lab["settings"]
    out = write(lab["wd"] / "results/bench/s/other.tsv", "x\n")
    register_files("benchmark", [out], rule="bench_summary", settings=s)
    lineage(s, "results/bench/s/other.tsv")
    fresh = RegistrySettings.from_config({}, workdir=lab["wd"] / "fresh")
    fresh_h5ad = standard_h5ad(lab["wd"] / "fresh/results/qc/x.h5ad")
    register_files("qc", [fresh_h5ad], rule="qc", settings=fresh)
    assert not offline.exists(), offline.read_text()


def test_register_outputs_reads_the_snakemake_job(lab, monkeypatch):
    monkeypatch.chdir(lab["wd"])
    out = write(lab["wd"] / "results/embed/random/s.h5ad", "random embedding")
    job = Job(
        "baseline",
        ["results/embed/random/s.h5ad"],
        input=["results/qc/d.h5ad"],
        wildcards={"method": "random", "evalset": "s"},
        params={"params": {"seed": 0}},
        config=CONFIG,
    )
    result = register_outputs(job, kind="embedding")
    assert result["inputs"] == ["results/qc/d.h5ad"]
    rec = show(lab["settings"], "results/embed/random/s.h5ad")
    assert rec["run"]["wildcards"] == {"method": "random", "evalset": "s"}
    assert rec["path"] == str(out) and rec["kind"] == "embedding"


def test_a_registered_h5ad_is_a_dataset_source(lab, tmp_path):
    where = {"path": str(lab["wd"] / ".scfm-registry")}
    cfg = {"source": "lamindb", "key": "results/qc/d.h5ad", "registry": where}
    man = fetch_dataset("reused", cfg, tmp_path / "raw")
    (matrix,) = man["matrices"]
    assert Path(matrix["path"]) == tmp_path / "raw" / "reused.h5ad"
    assert matrix["sha256"] == hash_file(lab["qc"])
    assert man["defaults"]["genes"] == {"id_type": "as_is", "symbol_column": "gene_symbol"}
    reg = man["source_info"]["registry"]
    assert reg["key"] == "results/qc/d.h5ad" and reg["kind"] == "qc"
    assert reg["run"]["rule"] == "qc"


def test_a_registered_raw_dataset_is_a_dataset_source(lab, tmp_path):
    where = {"path": str(lab["wd"] / ".scfm-registry")}
    uid = show(lab["settings"], "resources/raw/d/manifest.json")["uid"]
    cfg = {"source": "lamindb", "uid": uid[:16], "registry": where}
    man = fetch_dataset("again", cfg, tmp_path / "raw")
    assert man["format"] == "h5ad" and man["defaults"] == {"obs_map": {"cell_type": "cell_type"}}
    assert man["matrices"][0]["url"] == "https://example.org/d.h5ad"
    assert man["matrices"][0]["sha256"] == hash_file(lab["raw"])
    assert man["source_info"]["original_source"]["source"] == "url"


def test_an_unknown_key_names_the_config_field(lab, tmp_path):
    where = {"path": str(lab["wd"] / ".scfm-registry")}
    cfg = {"source": "lamindb", "key": "results/qc/nope.h5ad", "registry": where}
    with pytest.raises(ScfmInputError, match=r"datasets\.x\.key: 'results/qc/nope.h5ad'"):
        fetch_dataset("x", cfg, tmp_path / "raw")


def test_cli_list_show_lineage(lab, capsys, monkeypatch):
    monkeypatch.chdir(lab["wd"])
    assert cli(["registry", "list", "--kind", "raw"]) == 0
    out = capsys.readouterr().out
    assert "resources/raw/d/manifest.json" in out and "rule download [dataset=d]" in out
    assert cli(["registry", "show", "results/qc/d.h5ad"]) == 0
    out = capsys.readouterr().out
    assert "made by: rule qc [dataset=d]" in out and "input: results/standard/d.h5ad" in out
    assert cli(["registry", "lineage", "results/embed/pca/s.h5ad"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("results/embed/pca/s.h5ad")
    assert lines[-1].strip().startswith("`-- resources/raw/d/manifest.json")
    assert cli(["registry", "--json", "lineage", "results/qc/d.h5ad"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"][0]["key"] == "results/standard/d.h5ad"
    assert cli(["registry", "show", "nope"]) == 1
    assert "no artifact or collection" in capsys.readouterr().err


def _count(path: str, n: int) -> None:
    for _ in range(n):
        with file_lock(path + ".lock", timeout=30):
            value = int(Path(path).read_text())
            time.sleep(0.002)
            Path(path).write_text(str(value + 1))


def test_file_lock_serialises_processes_and_times_out(tmp_path):
    counter = tmp_path / "n"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_count, args=(str(counter), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert counter.read_text() == "100"
    with file_lock(tmp_path / "held.lock", timeout=1):
        t = time.monotonic()
        with pytest.raises(LockTimeout), file_lock(tmp_path / "held.lock", timeout=0.3):
            pass
        assert time.monotonic() - t < 2


REGISTER = """
import sys
from pathlib import Path
from scfm.registry import RegistrySettings, register_files
wd, i = Path(sys.argv[1]), sys.argv[2]
out = wd / "results" / f"part{i}.tsv"
out.write_text(f"part {i}\\n")
s = RegistrySettings.from_config({"timeout": 120}, workdir=wd)
r = register_files("benchmark", [out], rule="bench_summary", wildcards={"evalset": i}, settings=s)
print(r["outputs"][0]["uid"])
"""


def test_concurrent_jobs_share_one_new_instance(tmp_path):
    """Four jobs register at once into a registry none of them has created yet."""
    (tmp_path / "results").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER, str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    s = RegistrySettings.from_config({}, workdir=tmp_path)
    assert {r["key"] for r in list_records(s)} == {f"results/part{i}.tsv" for i in range(4)}
    db = tmp_path / ".scfm-registry" / "storage" / ".lamindb" / "lamin.db"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_worker_runs_under_the_configured_python(lab, tmp_path):
    """registry.python: per-rule conda envs without lamindb hand the registry to another Python."""
    marker = tmp_path / "used"
    wrapper = tmp_path / "python-with-lamindb"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    s = RegistrySettings.from_config({"python": str(wrapper)}, workdir=lab["wd"])
    assert {r["key"] for r in list_records(s, kind="qc")} >= {"results/qc/d.h5ad"}
    assert "-m scfm.registry._worker" in marker.read_text()


def test_a_configured_python_without_lamindb_is_named(lab, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    s = RegistrySettings.from_config({"python": python}, workdir=lab["wd"])
    with pytest.raises(ScfmRegistryError, match="not installed in this environment") as err:
        list_records(s)
    assert python in str(err.value)
