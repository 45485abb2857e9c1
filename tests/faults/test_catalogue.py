"""The bad-input catalogue: one table of malformed inputs, each run through the pipeline's call.

Every case builds a small bad input under a temporary directory, makes the call a rule's
script makes on it (``load_config``, ``standardize``, ``fragments``, ``merge_manifests``,
``train``, ``embed_file``, ``prepare_evalset``) and checks that the error names the file, the
field and what was expected, that the stage's output directory holds nothing afterwards (no
output, no temporary file) and that every input file is byte-identical (:func:`input_digests`).
A few inputs are accepted with a warning; those cases check the warning and that the output
was written.

``python tests/faults/test_catalogue.py --markdown`` regenerates the catalogue table of
docs/robustness.md: only the text between the ``<!-- catalogue:start -->`` and
``<!-- catalogue:end -->`` markers is replaced, the hand-written sections before and after them
are kept. The doc is checked against the cases: :func:`test_bad_input` compares each case's row
(its exact, normalised message) with the doc's, and :func:`test_doc_catalogue_is_generated`
checks that the block between the markers holds the header and one row per case, in order,
and nothing else. Messages are normalised by :func:`placeholders` (``<file>``, ``<tmp>``), and
no case's message may depend on the length of the temporary directory's path.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

if __name__ == "__main__":  # script mode: make tests/_simcorpus.py importable as under pytest
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _simcorpus import one_dataset_corpus, simulated

from scfm.errors import ScfmConfigError, ScfmInputError, ScfmNotWritableError

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "robustness.md"
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"
REGENERATE = "python tests/faults/test_catalogue.py --markdown"
HEADER = [
    "| stage | malformed input | exact error message | test id |",
    "|---|---|---|---|",
]
BINNED = {"kind": "binned", "n_bins": 7, "max_len": 24, "genes": "nonzero", "target_sum": 1e4}
N_CELLS, N_GENES = 12, 6


# --------------------------------------------------------------------------- the case table


@dataclass(frozen=True)
class Call:
    """What a builder returns: the call to make, the file its error must name, the output dir."""

    run: Callable[[], Any]
    file: Path | str  # the file (or directory) the error must name
    out: Path  # the stage's output directory: must hold nothing after a failure
    cleanup: Callable[[], Any] | None = None  # undoes what the builder set up (a mount)


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    malformed: str
    build: Callable[[Ctx], Call]
    error: type[Exception] | None  # None: accepted, with a warning matching ``match``
    match: str  # regex searched in the message (or in the warning)
    field: str = ""  # ScfmInputError.field exactly; for ScfmConfigError the key path
    expected: str = ""  # regex searched in ScfmInputError.expected (else in the message)


class Ctx:
    """A case's directory plus shared artifacts (a corpus, a genome) built once per session."""

    def __init__(self, tmp: Path, cache: Path) -> None:
        self.tmp, self.cache = tmp, cache
        self.out = tmp / "out"

    def _cached(self, name: str, make: Callable[[Path], None]) -> Path:
        path = self.cache / name
        if not path.exists():
            work = self.cache / f".{name}.building"
            shutil.rmtree(work, ignore_errors=True)
            make(work)
            work.rename(path)
        return path

    def corpus(self) -> Path:
        """A private copy of a one-dataset corpus (h5ad ``a``, vocab, shards, manifest)."""

        def make(root: Path) -> None:
            one_dataset_corpus(root, simulated(96, 60), BINNED, "binned")

        src = self._cached("corpus", make)
        dst = self.tmp / "corpus"
        shutil.copytree(src, dst)
        return dst

    def genome(self) -> Path:
        """``chrom.sizes`` and ``genes.tsv`` of a one-chromosome simulated genome (chr1, 100 kb)."""
        from scfm.atac.genome import write_genome
        from scfm.atac.simulate import simulate_genome

        return self._cached(
            "genome",
            lambda d: write_genome(simulate_genome(n_chroms=1, chrom_size=100_000, mito=False), d),
        )

    def model(self, corpus: Path) -> Path:
        """An untrained model.pt of ``corpus``, exported as training exports one."""
        return export_untrained(self.tmp / "run" / "model.pt", corpus / "vocab.tsv")


# --------------------------------------------------------------------------- builders


def export_untrained(path: Path, vocab_path: Path) -> Path:
    import torch

    from scfm.models import ModelConfig, build_model, build_objectives
    from scfm.tokenize import Vocab
    from scfm.train import export_model

    vocab = Vocab.read(vocab_path)
    cfg = ModelConfig.from_dict(
        {
            "kind": "transformer",
            "vocab_size": len(vocab),
            "value_kind": "bin",
            "n_value_tokens": BINNED["n_bins"],
            "max_len": BINNED["max_len"],
            "d_model": 16,
            "n_heads": 2,
            "n_layers": 1,
        }
    )
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict({o.name: o for o in build_objectives({"ordinal": 1.0}, cfg)})
    table = vocab.table
    return export_model(
        path,
        state_dict=build_model(cfg).state_dict(),
        model_config=cfg.to_dict(),
        vocab={k: table[k].astype(str).tolist() for k in ("token", "kind", "gene_symbol")},
        tokenizer={"name": "binned", **BINNED},
        vocab_hash=vocab.hash,
        extra={
            "heads": heads.state_dict(),
            "step": 0,
            "run_config": {"objectives": {"ordinal": {"weight": 1.0}}, "max_steps": 1},
        },
    )


def counts(n_cells: int = N_CELLS, n_genes: int = N_GENES) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.poisson(3.0, (n_cells, n_genes)) + 1).astype(np.int64)


def write_h5ad(
    path: Path, x: Any = None, *, var: list[str] | None = None, obs: pd.DataFrame | None = None
) -> Path:
    x = counts() if x is None else x
    var = var or [f"ENSG{i:011d}" for i in range(1, x.shape[1] + 1)]
    obs = obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])])
    path.parent.mkdir(parents=True, exist_ok=True)
    ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=var)).write_h5ad(path)
    return path


def with_value(value: float) -> np.ndarray:
    x = counts().astype(np.float32)
    x[3, 2] = value
    return x


def standardize_call(ctx: Ctx, raw: Path, *, counts: str = "auto", fmt: str = "auto") -> Call:
    """Rules download + standardize on a ``local`` dataset at ``raw``."""
    from scfm.config import validate_config
    from scfm.io.sources import fetch_dataset
    from scfm.io.standardize import standardize

    ds = {"source": "local", "path": str(raw), "counts": counts, "format": fmt}
    ds["genes"] = {"id_type": "as_is"}
    cfg = validate_config({"datasets": {"d": ds}})["datasets"]["d"]

    def run() -> Any:
        fetch_dataset("d", cfg, ctx.tmp / "raw" / "d")
        return standardize(
            ctx.tmp / "raw" / "d" / "manifest.json",
            ctx.out / "d.h5ad",
            dataset="d",
            cfg=cfg,
            chunk_cells=5,
        )

    return Call(run, raw, ctx.out)


def h5ad_case(x_or_edit: Any = None, *, counts: str = "auto", **kw: Any) -> Callable[[Ctx], Call]:
    """A builder: a small h5ad (``x_or_edit`` a matrix, or a function editing the file)."""

    def build(ctx: Ctx) -> Call:
        path = ctx.tmp / "in" / "d.h5ad"
        if callable(x_or_edit):
            write_h5ad(path, **kw)
            x_or_edit(path)
        else:
            write_h5ad(path, x_or_edit, **kw)
        return standardize_call(ctx, path, counts=counts)

    return build


def h5_edit(fn: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            fn(f)

    return edit


def truncate(keep: float) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return edit


def overwrite(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def tenx_h5_case(edit: Callable[[h5py.File], None]) -> Callable[[Ctx], Call]:
    """A builder: a Cell Ranger v3 .h5 (genes x cells CSC) edited by ``edit``."""

    def build(ctx: Ctx) -> Call:
        path = ctx.tmp / "in" / "filtered_feature_bc_matrix.h5"
        path.parent.mkdir(parents=True)
        csc = sp.csc_matrix(counts().T)
        with h5py.File(path, "w") as f:
            m = f.create_group("matrix")
            m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
            m["shape"] = np.array(csc.shape)
            m["barcodes"] = np.array([f"AAAC-{i}" for i in range(N_CELLS)], dtype="S")
            feats = m.create_group("features")
            feats["id"] = np.array([f"ENSG{i:011d}" for i in range(1, N_GENES + 1)], dtype="S")
            feats["name"] = np.array([f"G{i}" for i in range(N_GENES)], dtype="S")
            feats["feature_type"] = np.array(["Gene Expression"] * N_GENES, dtype="S")
            edit(f)
        return standardize_call(ctx, path)

    return build


def mtx_case(
    named: str,
    *,
    header: str = "%%MatrixMarket matrix coordinate integer general",
    n_barcodes: int = N_CELLS,
    n_features: int = N_GENES,
) -> Callable[[Ctx], Call]:
    """A builder: a 10x Matrix Market directory (genes x cells) with the given damage."""

    def build(ctx: Ctx) -> Call:
        d = ctx.tmp / "in" / "mtx"
        d.mkdir(parents=True)
        coo = sp.coo_matrix(counts().T)
        lines = [header, f"{coo.shape[0]} {coo.shape[1]} {coo.nnz}"]
        lines += [
            f"{i + 1} {j + 1} {v}" for i, j, v in zip(coo.row, coo.col, coo.data, strict=True)
        ]
        files = {
            "matrix.mtx.gz": "\n".join(lines) + "\n",
            "barcodes.tsv.gz": "".join(f"AAAC-{i}\n" for i in range(n_barcodes)),
            "features.tsv.gz": "".join(
                f"ENSG{i:011d}\tG{i}\tGene Expression\n" for i in range(1, n_features + 1)
            ),
        }
        for name, text in files.items():
            (d / name).write_bytes(gzip.compress(text.encode(), mtime=0))
        call = standardize_call(ctx, d, fmt="mtx")
        return Call(call.run, d / named, call.out)

    return build


def fragments_case(
    lines: list[str], *, compress: str = "gzip", cut: float | None = None
) -> Callable[[Ctx], Call]:
    """A builder: a fragment file of ``lines`` (tab-separated) for rule atac_fragments."""

    def build(ctx: Ctx) -> Call:
        from scfm.atac.pipeline import fragments

        raw = ctx.tmp / "in" / "fragments.tsv.gz"
        raw.parent.mkdir(parents=True)
        text = "".join(line.replace(" ", "\t") + "\n" for line in lines).encode()
        data = gzip.compress(text, mtime=0) if compress == "gzip" else text
        raw.write_bytes(data[: int(len(data) * cut)] if cut else data)
        manifest = ctx.tmp / "raw" / "manifest.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(
            json.dumps({"dataset": "d", "format": "fragments", "matrices": [{"path": str(raw)}]})
        )
        genome = ctx.genome()

        def run() -> Any:
            return fragments(
                manifest,
                genome / "chrom.sizes",
                genome / "genes.tsv",
                ctx.out / "fragments.tsv.gz",
                cfg={},
            )

        return Call(run, raw, ctx.out)

    return build


GOOD_FRAGMENTS = [f"chr1 {100 * i} {100 * i + 150} BC{i % 3} 1" for i in range(1, 30)]


def config_case(edit: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], Call]:
    """A builder: config/config.yaml with a minimal valid config edited by ``edit``."""

    def build(ctx: Ctx) -> Call:
        from scfm.config import load_config

        cfg: dict[str, Any] = {
            "datasets": {"a": {"source": "demo", "demo": "simulated"}},
            "corpora": {"c": {"datasets": ["a"]}},
            "tokenizers": {"binned": {"kind": "binned", "n_bins": 7}},
            "models": {"tiny": {"preset": "tiny"}},
            "runs": {"r": {"corpus": "c", "tokenizer": "binned", "model": "tiny", "max_steps": 1}},
        }
        edit(cfg)
        path = ctx.tmp / "config" / "config.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return Call(lambda: load_config(path), path, ctx.out)

    return build


def raw_config_case(text: str) -> Callable[[Ctx], Call]:
    def build(ctx: Ctx) -> Call:
        from scfm.config import load_config

        path = ctx.tmp / "config" / "config.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(text)
        return Call(lambda: load_config(path), path, ctx.out)

    return build


def setter(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


def renamer(block: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        cfg[block] = {new if k == old else k: v for k, v in cfg[block].items()}

    return edit


def train_case(damage: Callable[[Path], Path]) -> Callable[[Ctx], Call]:
    """A builder: rule train (``scfm.train.train``) on a corpus damaged by ``damage``.

    ``damage`` returns the file the error must name.
    """

    def build(ctx: Ctx) -> Call:
        from scfm.train import train

        corpus = ctx.corpus()
        named = damage(corpus)
        run = {"batch_size": 8, "max_steps": 1, "val_every": 0, "objectives": {"ordinal": 1.0}}
        model = {"preset": "tiny", "d_model": 16, "n_heads": 2, "n_layers": 1}
        out = ctx.out / "train" / "r"
        out.mkdir(parents=True)  # the rule's script creates it (run.json, model.json)
        return Call(
            lambda: train(run, model, corpus / "manifest.json", out, device="cpu"), named, ctx.out
        )

    return build


def first_shard(corpus: Path) -> Path:
    return corpus / json.loads((corpus / "manifest.json").read_text())["shards"][0]["path"]


def tamper_shard(corpus: Path) -> Path:
    shard = first_shard(corpus)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return shard


def remove_shard(corpus: Path) -> Path:
    shard = first_shard(corpus)
    shard.unlink()
    return shard


def corrupt_manifest(corpus: Path) -> Path:
    """Cut the manifest inside the first shard's sha256.

    Everything before that point is free of paths (the manifest's dataset ``source`` is an
    absolute path and comes later), so the decoder's ``(char N)`` does not depend on where the
    temporary directory is.
    """
    manifest = corpus / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: text.index('"sha256"') + 20])
    return manifest


def edit_vocab(corpus: Path) -> Path:
    vocab = corpus / "vocab.tsv"
    table = pd.read_csv(vocab, sep="\t")
    table.loc[table.index[-1], "token"] = "ENSG99999999999"
    table.to_csv(vocab, sep="\t", index=False)
    return vocab


def merge_with_other_vocab(ctx: Ctx) -> Call:
    """Rule corpus_manifest with a vocabulary other than the one the shards were made with."""
    from scfm.shard import merge_manifests

    corpus = ctx.corpus()
    vocab = edit_vocab(corpus)
    shards = corpus / "shards" / "a" / "manifest.json"
    out = ctx.out / "manifest.json"
    return Call(
        lambda: merge_manifests(
            {"a": shards}, out, corpus="c", tokenizer="binned", vocab_path=vocab
        ),
        shards,
        ctx.out,
    )


def embed_case(
    damage: Callable[[Path], None] | None = None, *, input_genes: str = "same"
) -> Callable[[Ctx], Call]:
    """A builder: rule embed (``embed_file``) with a damaged model.pt or foreign input genes."""

    def build(ctx: Ctx) -> Call:
        from scfm.embed import embed_file

        corpus = ctx.corpus()
        model = ctx.model(corpus)
        data = corpus / "a.h5ad"
        named: Path = model
        if damage is not None:
            damage(model)
        if input_genes == "foreign":
            adata = ad.read_h5ad(data)
            n_foreign = int(adata.n_vars * 0.6)
            adata.var_names = [f"MOUSE{i:05d}" for i in range(n_foreign)] + list(
                adata.var_names[n_foreign:]
            )
            data = ctx.tmp / "in" / "foreign.h5ad"
            data.parent.mkdir(parents=True)
            adata.write_h5ad(data)
            named = data
        out = ctx.out / "embed" / "tiny" / "e.h5ad"
        return Call(lambda: embed_file(model, data, out, device="cpu"), named, ctx.out)

    return build


def retag_vocab(model: Path) -> None:
    import torch

    payload = torch.load(model, weights_only=True)
    payload["vocab"]["token"][-1] = "ENSG99999999999"
    torch.save(payload, model)


def evalset_case(obs_edit: Callable[[pd.DataFrame], None], label_key: str = "cell_type"):
    """A builder: rule bench_data (``prepare_evalset``) on a QC'd h5ad with edited obs."""

    def build(ctx: Ctx) -> Call:
        from scfm.bench.evalset import prepare_evalset

        n = 40
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical(["T", "B"] * (n // 2)),
                "batch": pd.Categorical(["b0"] * (n // 2) + ["b1"] * (n // 2)),
            },
            index=[f"c{i}" for i in range(n)],
        )
        obs_edit(obs)
        path = write_h5ad(ctx.tmp / "qc" / "d.h5ad", counts(n, 30), obs=obs)
        out = ctx.out / "bench" / "e" / "data.h5ad"
        return Call(
            lambda: prepare_evalset(
                path, out, label_key=label_key, batch_key="batch", n_hvg=10, name="e"
            ),
            path,
            ctx.out,
        )

    return build


def set_obs(column: str, values: Any) -> Callable[[pd.DataFrame], None]:
    def edit(obs: pd.DataFrame) -> None:
        obs[column] = values

    return edit


# ---- builders of the issue-14 cases (outputs that are inputs, non-regular files, ...)


def _embed_inputs(ctx: Ctx) -> tuple[Path, Path]:
    """model.pt and a private copy of the corpus' h5ad under ``<tmp>/in``."""
    corpus = ctx.corpus()
    data = ctx.tmp / "in" / "x.h5ad"
    data.parent.mkdir(parents=True)
    shutil.copy(corpus / "a.h5ad", data)
    return ctx.model(corpus), data


def embed_onto_input(how: str) -> Callable[[Ctx], Call]:
    """``scfm embed``'s call with an output that is the input (same path, symlink, hard link)."""

    def build(ctx: Ctx) -> Call:
        from scfm.embed import embed_file

        model, data = _embed_inputs(ctx)
        out = {
            "same": ctx.tmp / "in" / "sub" / ".." / "x.h5ad",  # a different spelling
            "symlink": ctx.tmp / "in" / "link.h5ad",
            "hardlink": ctx.tmp / "in" / "hard.h5ad",
        }[how]
        (ctx.tmp / "in" / "sub").mkdir()
        if how == "symlink":
            out.symlink_to(data.name)
        elif how == "hardlink":
            out.hardlink_to(data)
        return Call(lambda: embed_file(model, data, out, device="cpu"), out, ctx.out)

    return build


def embed_duplicate_genes(ctx: Ctx) -> Call:
    from scfm.embed import embed_file

    model, data = _embed_inputs(ctx)
    adata = ad.read_h5ad(data)
    adata.var_names = [adata.var_names[0], *adata.var_names[:-1]]
    adata.write_h5ad(data)
    out = ctx.out / "embed" / "e.h5ad"
    return Call(lambda: embed_file(model, data, out, device="cpu"), data, ctx.out)


def standardize_onto_input(ctx: Ctx) -> Call:
    """Rule standardize whose output resolves to the local source file."""
    from scfm.config import validate_config
    from scfm.io.sources import fetch_dataset
    from scfm.io.standardize import standardize

    raw = write_h5ad(ctx.tmp / "in" / "d.h5ad")
    ds = {"source": "local", "path": str(raw), "genes": {"id_type": "as_is"}}
    cfg = validate_config({"datasets": {"d": ds}})["datasets"]["d"]
    out = ctx.out / ".." / "in" / "d.h5ad"

    def run() -> Any:
        fetch_dataset("d", cfg, ctx.tmp / "raw" / "d")
        return standardize(ctx.tmp / "raw" / "d" / "manifest.json", out, dataset="d", cfg=cfg)

    return Call(run, out, ctx.out)


def symbols_one_gene(ctx: Ctx) -> Call:
    """Two symbols of the file (TP53, tp53) that the gene table maps to one Ensembl ID."""
    from scfm.config import validate_config
    from scfm.io.sources import fetch_dataset
    from scfm.io.standardize import standardize

    symbols = ["TP53", "tp53", "GAPDH", "ACTB", "CD3E", "MS4A1"]
    raw = write_h5ad(ctx.tmp / "in" / "d.h5ad", var=symbols)
    table = ctx.tmp / "in" / "genes.tsv"
    ids = ["ENSG00000141510", "ENSG00000111640", "ENSG00000075624", "ENSG00000198851"]
    rows = zip([*ids, "ENSG00000156738"], ["TP53", "GAPDH", "ACTB", "CD3E", "MS4A1"], strict=True)
    table.write_text("gene_id\tgene_symbol\n" + "".join(f"{i}\t{g}\n" for i, g in rows))
    ds = {"source": "local", "path": str(raw), "genes": {"id_type": "symbol"}}
    refs = {"human": {"genes": {"path": str(table)}}}
    cfg = validate_config({"datasets": {"d": ds}, "references": refs})["datasets"]["d"]

    def run() -> Any:
        fetch_dataset("d", cfg, ctx.tmp / "raw" / "d")
        manifest = ctx.tmp / "raw" / "d" / "manifest.json"
        return standardize(manifest, ctx.out / "d.h5ad", dataset="d", cfg=cfg, gene_table=table)

    return Call(run, raw, ctx.out)


def special_file(kind: str, ctx: Ctx) -> Path:
    """A FIFO or a two-link symlink loop named ``<tmp>/in/d.h5ad``."""
    import os

    path = ctx.tmp / "in" / "d.h5ad"
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        (ctx.tmp / "in" / "e.h5ad").symlink_to(path.name)
        path.symlink_to("e.h5ad")
    return path


def local_special(kind: str) -> Callable[[Ctx], Call]:
    """Rule download on a local source that became a FIFO or a symlink loop after start-up.

    (At start-up the config check stops it already: cases config-local-*.)
    """

    def build(ctx: Ctx) -> Call:
        from scfm.config import validate_config
        from scfm.io.sources import fetch_dataset

        ds = {"source": "local", "path": str(ctx.tmp / "in" / "d.h5ad")}
        cfg = validate_config({"datasets": {"d": ds}})["datasets"]["d"]  # does not exist yet
        path = special_file(kind, ctx)
        return Call(lambda: fetch_dataset("d", cfg, ctx.out / "raw" / "d"), path, ctx.out)

    return build


def config_special(kind: str) -> Callable[[Ctx], Call]:
    """config.yaml whose local dataset path is a FIFO or a symlink loop (checked at start-up)."""

    def build(ctx: Ctx) -> Call:
        from scfm.config import load_config

        path = special_file(kind, ctx)
        cfg = {"datasets": {"a": {"source": "local", "path": str(path)}}}
        config = ctx.tmp / "config" / "config.yaml"
        config.parent.mkdir(parents=True)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return Call(lambda: load_config(config), config, ctx.out)

    return build


def legacy_h5ad(sparse: bool) -> Callable[[Path], None]:
    """Rewrite the file in anndata < 0.7's layout: obs/var compound datasets, no encodings."""

    def edit(path: Path) -> None:
        x = counts()
        path.unlink()
        with h5py.File(path, "w") as f:
            if sparse:
                m = sp.csr_matrix(x)
                g = f.create_group("X")
                g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
                g.attrs["h5sparse_format"] = "csr"
                g.attrs["h5sparse_shape"] = np.array(m.shape)
            else:
                f["X"] = x
            obs = np.zeros(N_CELLS, dtype=[("index", "S8"), ("cell_type", np.int8)])
            obs["index"] = [f"c{i}".encode() for i in range(N_CELLS)]
            obs["cell_type"] = [i % 2 for i in range(N_CELLS)]
            f["obs"] = obs
            var = np.zeros(N_GENES, dtype=[("index", "S16")])
            var["index"] = [f"ENSG{i:011d}".encode() for i in range(1, N_GENES + 1)]
            f["var"] = var
            f.create_group("uns")["cell_type_categories"] = np.array([b"B", b"T"])

    return edit


def strip_attrs(group: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        for key in list(f[group].attrs):
            del f[group].attrs[key]

    return edit


def evalset_batches(sizes: list[int], labels: list[str | None] | None = None):
    """A builder: rule bench_data on a QC'd h5ad with batches of ``sizes`` cells."""

    def build(ctx: Ctx) -> Call:
        from scfm.bench.evalset import prepare_evalset

        n = sum(sizes)
        rng = np.random.default_rng(0)
        x = rng.negative_binomial(2, rng.uniform(0.05, 0.9, 200), (n, 200))
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical(labels or [["T", "B"][i % 2] for i in range(n)]),
                "batch": pd.Categorical(np.repeat([f"p{i:02d}" for i in range(len(sizes))], sizes)),
            },
            index=[f"c{i}" for i in range(n)],
        )
        path = write_h5ad(ctx.tmp / "qc" / "d.h5ad", x, obs=obs)
        out = ctx.out / "bench" / "e" / "data.h5ad"
        return Call(
            lambda: prepare_evalset(
                path, out, label_key="cell_type", batch_key="batch", n_hvg=50, name="e"
            ),
            path,
            ctx.out,
        )

    return build


def embed_readonly(ctx: Ctx) -> Call:
    """Rule embed whose output directory is on a read-only file system (a tmpfs mounted ro).

    Needs root (mount); as any other user, or where mounting is not allowed, the case skips.
    """
    import os
    import subprocess

    from scfm.embed import embed_file

    model, data = _embed_inputs(ctx)
    target = ctx.out / "embed"
    target.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("a read-only file system needs root to mount a tmpfs")
    cmd = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    out = target / "e.h5ad"
    return Call(
        lambda: embed_file(model, data, out, device="cpu"),
        target,
        ctx.out,
        cleanup=lambda: subprocess.run(["umount", str(target)], check=True),
    )


# --------------------------------------------------------------------------- the catalogue


def drop_key(block: str, name: str, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg[block][name].pop(key)


def chain(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        for e in edits:
            e(cfg)

    return edit


def drop_last(dataset: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        values = f[dataset][:-1]
        del f[dataset]
        f[dataset] = values

    return edit


def short_obs_index(f: h5py.File) -> None:
    drop_last(f"obs/{f['obs'].attrs['_index']}")(f)


E = ScfmInputError
C = ScfmConfigError
ENS3 = "ENSG00000000003"
FRAG = "fragments"

# fmt: off
CASES: list[Case] = [
    # ---- config: load_config, as workflow/rules/common.smk and `scfm validate-config` call it
    Case("config-typo-key", "config", "`organsim: human` (typo) in a dataset",
         config_case(setter("datasets.a.organsim", "human")), C,
         r"datasets\.a\.organsim: unknown key \(did you mean 'organism'\?\)",
         "datasets.a.organsim", r"expected one of: .*organism"),
    Case("config-wrong-type", "config", "`qc.rna.min_genes: '200'` (a string)",
         config_case(setter("qc.rna.min_genes", "200")), C,
         r"qc\.rna\.min_genes: '200' is not of type 'integer'", "qc.rna.min_genes", "integer"),
    Case("config-unknown-source", "config", "`source: zenodo`",
         config_case(chain(setter("datasets.a.source", "zenodo"),
                           drop_key("datasets", "a", "demo"))), C,
         r"datasets\.a\.source: 'zenodo' is not allowed", "datasets.a.source",
         r"expected one of: cellxgene_census, .*local, demo"),
    Case("config-name-dotdot", "config", "a dataset named `../a` (escapes results/)",
         config_case(renamer("datasets", "a", "../a")), C,
         r"datasets: invalid name '\.\./a'", "datasets",
         r"expected letters, digits, '_', '\.' or '-' only, and not '\.' or '\.\.'"),
    Case("config-name-slash", "config", "a corpus named `c/x`",
         config_case(renamer("corpora", "c", "c/x")), C,
         r"corpora: invalid name 'c/x'", "corpora", r"expected letters, digits"),
    Case("config-corpus-missing-dataset", "config", "a corpus lists an undefined dataset",
         config_case(setter("corpora.c.datasets", ["a", "b"])), C,
         r"corpora\.c\.datasets\[1\]: 'b' is not a dataset", "corpora.c.datasets[1]",
         r"expected one of: a$"),
    Case("config-run-missing-tokenizer", "config", "a run names an undefined tokenizer",
         config_case(setter("runs.r.tokenizer", "rank")), C,
         r"runs\.r\.tokenizer: 'rank' is not in tokenizers", "runs.r.tokenizer",
         r"expected one of: binned$"),
    Case("config-run-missing-corpus", "config", "a run names an undefined corpus",
         config_case(setter("runs.r.corpus", "big")), C,
         r"runs\.r\.corpus: 'big' is not in corpora", "runs.r.corpus", r"expected one of: c$"),
    Case("config-benchmark-missing-dataset", "config", "a benchmark names an undefined dataset",
         config_case(setter("benchmarks", {"e": {"dataset": "b", "methods": ["pca"]}})), C,
         r"benchmarks\.e\.dataset: 'b' is not a dataset", "benchmarks.e.dataset",
         r"expected one of: a$"),
    Case("config-not-yaml", "config", "a tab where YAML needs spaces",
         raw_config_case("datasets:\n  a: {source: demo\n\tdemo: simulated\n"), C,
         r"(?s)not valid YAML: .*found character '\\t' that cannot start any token",
         "line 3, column 1",
         r"cannot start any token"),
    # ---- h5ad: rules download (source local) + standardize
    Case("h5ad-float-counts", "h5ad", "X holds 2.5 (normalised values), no raw.X",
         h5ad_case(with_value(2.5)), E, r"holds no raw integer counts", "X",
         r"raw integer counts in X, raw\.X or layers\['counts'\]"),
    Case("h5ad-negative", "h5ad", "X holds -1 (`counts: X`)",
         h5ad_case(with_value(-1), counts="X"), E,
         rf"negative count -1\.0 at cell 'c3' \(row 3\), gene '{ENS3}'", "X",
         r"raw integer counts >= 0"),
    Case("h5ad-nan", "h5ad", "X holds NaN (`counts: X`)",
         h5ad_case(with_value(np.nan), counts="X"), E,
         rf"non-finite value nan at cell 'c3' \(row 3\), gene '{ENS3}'", "X",
         r"raw integer counts >= 0"),
    Case("h5ad-obs-rows", "h5ad", "obs has 11 rows, X 12",
         h5ad_case(h5_edit(short_obs_index)), E, r"has 11 rows but X has 12", "obs",
         r"one obs row per matrix row"),
    Case("h5ad-duplicate-var", "h5ad", "two genes named ENSG00000000001",
         h5ad_case(var=["ENSG00000000001"] * 2 + [f"ENSG{i:011d}" for i in range(3, 7)]), E,
         r"1 duplicated gene ID\(s\), e\.g\. \['ENSG00000000001'\]", "var/_index",
         r"one column per gene"),
    Case("h5ad-truncated", "h5ad", "the file cut at half its size",
         h5ad_case(truncate(0.5)), E, r"cannot be opened as HDF5 \(.*truncated file", "file",
         r"a complete, uncorrupted h5ad file"),
    Case("h5ad-not-hdf5", "h5ad", "a CSV file named .h5ad",
         h5ad_case(overwrite(b"cell,gene,count\nc1,g1,3\n")), E,
         r"cannot be opened as HDF5 \(.*file signature not found", "file",
         r"a complete, uncorrupted h5ad file"),
    Case("h5ad-missing-x", "h5ad", "no X, raw/X or layers/counts",
         h5ad_case(h5_edit(lambda f: f.__delitem__("X"))), E, r"no count matrix in the file",
         "X", r"X, raw/X or layers/counts"),
    # ---- 10x HDF5 and Matrix Market: standardize
    Case("10x-h5-no-features", "10x/mtx", "matrix/features group missing",
         tenx_h5_case(lambda f: f.__delitem__("matrix/features")), E,
         r"not a 10x HDF5 matrix \(.*'features' doesn't exist", "matrix", r"Cell Ranger v3"),
    Case("10x-h5-barcodes", "10x/mtx", "11 barcodes for 12 cells",
         tenx_h5_case(drop_last("matrix/barcodes")), E,
         r"11 barcodes but matrix/indptr has 12 cells", "matrix/barcodes",
         r"one barcode per cell"),
    Case("10x-h5-data-short", "10x/mtx", "matrix/data one entry short of indptr",
         tenx_h5_case(drop_last("matrix/data")), E,
         r"ends at 72 but matrix/data has 71 and matrix/indices 72 entries", "matrix/indptr",
         r"indptr\[-1\] == len\(data\) == len\(indices\)"),
    Case("mtx-wrong-header", "10x/mtx", "`%%MatrixMarket matrix array real general` (dense)",
         mtx_case("matrix.mtx.gz", header="%%MatrixMarket matrix array real general"), E,
         r"'%%MatrixMarket matrix array real general'", "header",
         r"'%%MatrixMarket matrix coordinate integer general'"),
    Case("mtx-barcodes-count", "10x/mtx", "barcodes.tsv.gz: 11 lines for 12 columns",
         mtx_case("barcodes.tsv.gz", n_barcodes=N_CELLS - 1), E,
         r"11 lines but matrix\.mtx\.gz has 12 columns \(cells\)", "lines",
         r"one line per matrix column"),
    Case("mtx-features-count", "10x/mtx", "features.tsv.gz: 5 lines for 6 rows",
         mtx_case("features.tsv.gz", n_features=N_GENES - 1), E,
         r"5 lines but matrix\.mtx\.gz has 6 rows \(genes\)", "lines",
         r"one line per matrix row"),
    # ---- scATAC fragments: rule atac_fragments
    Case("fragments-unsorted", FRAG, "coordinates out of order (accepted, sorted)",
         fragments_case(GOOD_FRAGMENTS[::-1]), None,
         r"is not coordinate-sorted \(first out-of-order fragment on line 2"),
    Case("fragments-plain-gzip", FRAG, "plain gzip, not BGZF (accepted, rewritten as BGZF)",
         fragments_case(GOOD_FRAGMENTS), None, r""),
    Case("fragments-three-columns", FRAG, "`chr1 100 250` (no barcode)",
         fragments_case(["chr1 100 250"] * 3), E,
         r"3 tab-separated column\(s\) in 'chr1\\t100\\t250'", "line 1",
         r"chrom, start, end, barcode\[, count\] separated by tabs"),
    Case("fragments-start-after-end", FRAG, "`chr1 500 300 BC0 1` (start > end)",
         fragments_case([*GOOD_FRAGMENTS[:3], "chr1 500 300 BC0 1"]), E,
         r"end <= start in 'chr1\\t500\\t300\\tBC0\\t1'", "line 4, column 3 (end)",
         r"end > start"),
    Case("fragments-non-integer", FRAG, "`chr1 1e2x 250 BC0 1`",
         fragments_case([*GOOD_FRAGMENTS[:2], "chr1 1e2x 250 BC0 1"]), E,
         r"missing or not an integer in 'chr1\\t1e2x", "line 3, column 2 (start)",
         r"an integer >= 0"),
    Case("fragments-beyond-chrom-end", FRAG, "every fragment past chr1's 100 kb",
         fragments_case([f"chr1 {200_000 + i} {200_100 + i} BC0 1" for i in range(5)]), E,
         r"5 of 5 fragments reach past their chromosome's end", "end",
         r"coordinates on genome"),
    Case("fragments-unknown-chrom", FRAG, "chromosome `chrZZ` the genome lacks",
         fragments_case(["chrZZ 100 200 BC0 1"]), E,
         r"not in the genome and not mapped, e\.g\. \['chrZZ'\]", "column 1 (chrom)",
         r"names of the genome \(e\.g\. \['chr1'\]\), or a chrom_map entry"),
    Case("fragments-truncated-gzip", FRAG, "a gzip stream cut at half",
         fragments_case(GOOD_FRAGMENTS * 20, cut=0.5), E,
         r"truncated or corrupt \(EOFError", "compressed stream", r"a complete gzip/BGZF file"),
    # issue 14: the column layout is checked on every line, not guessed from the first
    Case("fragments-count-column-appears", FRAG, "4 columns, then a 5th (count) from line 4",
         fragments_case([f"chr1 {100 * i} {100 * i + 150} BC0" for i in range(1, 4)]
                        + GOOD_FRAGMENTS[3:6]), E,
         r"5 tab-separated field\(s\) in 'chr1\\t400\\t550\\tBC1\\t1', but 4 on line 1 "
         r"\(the first data line\)", "line 4",
         r"4 fields on every line, as on line 1"),
    Case("fragments-tab-in-barcode", FRAG, "`chr1 300 450 BC\\t0 1` (a tab inside the barcode)",
         fragments_case([*GOOD_FRAGMENTS[:2], "chr1 300 450 BC\t0 1"]), E,
         r"6 tab-separated field\(s\) in 'chr1\\t300\\t450\\tBC\\t0\\t1', but 5 on line 1",
         "line 3", r"a barcode cannot contain a tab"),
    # ---- vocabulary and shards: rules corpus_manifest and train
    Case("shards-vocab-hash", "vocab/shards", "vocab.tsv changed after the shards were made",
         merge_with_other_vocab, E, r"[0-9a-f]{16} differs from .*vocab\.tsv \([0-9a-f]{16}\)",
         "vocab_hash", r"shards made with the corpus vocabulary"),
    Case("train-vocab-hash", "vocab/shards", "vocab.tsv changed after the corpus manifest",
         train_case(edit_vocab), E, r"[0-9a-f]{16} != manifest [0-9a-f]{16}", "hash",
         r"the vocabulary the shards were made with"),
    Case("shard-tampered", "vocab/shards", "one byte of a shard flipped",
         train_case(tamper_shard), E, r"[0-9a-f]{64} differs from the manifest's [0-9a-f]{64}",
         "sha256", r"the bytes the sharding stage wrote"),
    Case("shard-missing", "vocab/shards", "a shard the manifest lists deleted",
         train_case(remove_shard), E, r": file: missing", "file",
         r"the shard the manifest lists"),
    Case("manifest-corrupt-json", "vocab/shards", "corpus manifest.json cut short",
         train_case(corrupt_manifest), E, r"not readable \(.*line \d+ column \d+", "file",
         r"a corpus manifest"),
    # ---- model.pt: rule embed
    Case("model-truncated", "checkpoints", "model.pt cut at half its size",
         embed_case(truncate(0.5)), E, r"not loadable with torch\.load\(weights_only=True\)",
         "file", r"a model\.pt written by scfm training"),
    Case("model-not-torch", "checkpoints", "model.pt holding text",
         embed_case(overwrite(b"not a model\n")), E,
         r"not loadable with torch\.load\(weights_only=True\) \(UnpicklingError\)", "file",
         r"a model\.pt written by scfm training"),
    Case("model-wrong-vocab", "checkpoints", "a token of model.pt's vocabulary replaced",
         embed_case(retag_vocab), E, r"does not match its vocabulary \([0-9a-f]{16}\)",
         "vocab_hash", r"an undamaged model file"),
    Case("embed-genes-missing", "embed", "60% of the input's genes unknown to the vocabulary",
         embed_case(input_genes="foreign"), E,
         r"81% of the counts fall on 36 genes missing from the model's vocabulary",
         "var_names", r"at most 50%"),
    # ---- evaluation sets: rule bench_data
    Case("evalset-missing-label", "evaluation sets", "`label_key: celltype`, not in obs",
         evalset_case(lambda obs: None, label_key="celltype"), E,
         r"no such column \(benchmarks\.<name>\.label_key = 'celltype'\)", "obs['celltype']",
         r"one of the obs columns: cell_type, batch"),
    Case("evalset-one-batch", "evaluation sets", "every cell in batch b0 (scib needs two)",
         evalset_case(set_obs("batch", "b0")), E, r"one group only \('b0'\)", "obs['batch']",
         r"at least two values"),
    Case("evalset-labels-nan", "evaluation sets", "obs['cell_type'] all NaN",
         evalset_case(set_obs("cell_type", pd.Categorical([np.nan] * 40, categories=["T"]))),
         E, r"no cell has a label", "obs['cell_type']", r"labelled cells"),
    # ---- issue 14: outputs that are inputs, non-regular files, old layouts, missing labels
    Case("embed-output-is-input", "embed", "`--output` a second spelling of `--input`",
         embed_onto_input("same"), E,
         r"is the input file \S+/in/x\.h5ad \(the same path\); writing it would replace",
         "output", r"an output path that is none of the inputs \(input, model\)"),
    Case("embed-output-symlink", "embed", "`--output` a symlink to `--input`",
         embed_onto_input("symlink"), E, r"through a symlink: both resolve to \S+/in/x\.h5ad",
         "output", r"none of the inputs"),
    Case("embed-output-hardlink", "embed", "`--output` a hard link of `--input`",
         embed_onto_input("hardlink"), E, r"\(a hard link: same device and inode\)", "output",
         r"none of the inputs"),
    Case("standardize-output-is-input", "h5ad", "the output resolves to the local source file",
         standardize_onto_input, E, r"is the matrices\[0\] file \S+/in/d\.h5ad \(the same",
         "output", r"none of the inputs \(manifest, matrices\[0\]\)"),
    Case("embed-duplicate-genes", "embed", "two columns named like the first gene",
         embed_duplicate_genes, E, r"1 duplicated gene ID\(s\), e\.g\. \['SIMG\d{5}'\]",
         "var_names", r"one column per gene"),
    Case("h5ad-duplicate-symbols", "h5ad", "symbols `TP53` and `tp53`: one Ensembl ID",
         symbols_one_gene, E,
         r"1 duplicated gene ID\(s\), e\.g\. \['ENSG00000141510 \(from TP53, tp53\)'\]",
         "var/_index", r"one column per gene"),
    Case("local-fifo", "h5ad", "the local `path:` is a FIFO",
         local_special("fifo"), E, r"is a FIFO \(named pipe\), not a regular file",
         "datasets.d.path", r"a regular h5ad, 10x h5 or Matrix Market file, or a 10x directory"),
    Case("local-symlink-loop", "h5ad", "the local `path:` is a symlink loop",
         local_special("loop"), E, r"is a symlink loop \(too many levels of symbolic links\)",
         "datasets.d.path", r"a regular h5ad"),
    Case("config-local-fifo", "config", "a local dataset `path:` that is a FIFO",
         config_special("fifo"), C,
         r"datasets\.a\.path: \S+/in/d\.h5ad is a FIFO \(named pipe\), not a regular file",
         "datasets.a.path", r"expected a regular file or a 10x directory"),
    Case("config-local-symlink-loop", "config", "a local dataset `path:` that is a symlink loop",
         config_special("loop"), C, r"datasets\.a\.path: \S+/in/d\.h5ad is a symlink loop",
         "datasets.a.path", r"expected a regular file or a 10x directory"),
    Case("h5ad-legacy-sparse", "h5ad", "anndata < 0.7 layout: compound obs/var, h5sparse X "
         "(accepted: read by anndata)", h5ad_case(legacy_h5ad(sparse=True)), None, r""),
    Case("h5ad-legacy-dense", "h5ad", "anndata < 0.7 layout, dense X (accepted)",
         h5ad_case(legacy_h5ad(sparse=False)), None, r""),
    Case("h5ad-var-no-encoding", "h5ad", "var group without its encoding attributes",
         h5ad_case(h5_edit(strip_attrs("var"))), E, r"read as dict, not a dataframe", "var",
         r"an h5ad dataframe \(encoding-type 'dataframe'"),
    Case("evalset-unlabelled", "evaluation sets", "4 cells labelled NaN, 2 `unknown` "
         "(accepted: kept, excluded from label metrics)",
         evalset_batches([60, 60], [None] * 4 + ["unknown"] * 2 + ["T", "B"] * 57), None,
         r"6 of 120 cells have no obs\['cell_type'\] \(missing or 'unknown'\): kept"),
    Case("evalset-small-batches", "evaluation sets", "14 batches of 2-30 cells "
         "(accepted: HVGs without the per-batch fit)",
         evalset_batches([2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 20, 24, 28, 30]), None,
         r"14 batch\(es\) have fewer than 50 cells .*HVGs chosen on all cells together"),
    Case("embed-readonly-output", "embed", "the output directory on a read-only file system",
         embed_readonly, ScfmNotWritableError,
         r"cannot write \S+/e\.h5ad: its output directory \S+ is not writable \(Read-only file",
         "e.h5ad", r"expected a writable directory"),
]
# fmt: on


# --------------------------------------------------------------------------- running a case


@dataclass
class Outcome:
    error: BaseException | None
    warnings: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # inputs whose bytes changed or vanished


def input_digests(ctx: Ctx, out: Path) -> dict[Path, str]:
    """sha256 of every regular file of the case outside its output directory (its inputs).

    FIFOs, devices and symlink loops are not regular files: never opened (a FIFO would block).
    """
    import hashlib

    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ctx.tmp.rglob("*"))
        if p.is_file() and out not in p.parents
    }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_case(case: Case, ctx: Ctx) -> tuple[Call, Outcome]:
    call = case.build(ctx)
    before = input_digests(ctx, call.out)
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        try:
            call.run()
            error = None
        except Exception as exc:
            error = exc
        finally:
            root.removeHandler(handler)
        files = sorted(p for p in call.out.rglob("*") if p.is_file()) if call.out.exists() else []
    finally:
        if call.cleanup is not None:
            call.cleanup()
    leftovers = [str(p.relative_to(call.out)) for p in files]
    after = input_digests(ctx, call.out)
    changed = [str(p.relative_to(ctx.tmp)) for p, d in before.items() if after.get(p) != d]
    return call, Outcome(error, handler.messages, leftovers, changed)


def placeholders(text: str, call: Call, ctx: Ctx) -> str:
    text = text.replace(str(call.file), "<file>")
    return text.replace(str(ctx.tmp), "<tmp>").replace(str(ctx.cache), "<tmp>")


def message(case: Case, call: Call, outcome: Outcome, ctx: Ctx) -> str:
    if case.error is None:
        shown = [w for w in outcome.warnings if re.search(case.match, w)] if case.match else []
        text = f"accepted; warns: {shown[0]}" if shown else "accepted, no warning"
    else:
        text = str(outcome.error)
    return placeholders(text, call, ctx)


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("catalogue-cache")


def test_catalogue_size_and_spread() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    stages = {c.stage for c in CASES}
    assert stages == {
        "config",
        "h5ad",
        "10x/mtx",
        "fragments",
        "vocab/shards",
        "checkpoints",
        "evaluation sets",
        "embed",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, cache: Path) -> None:
    ctx = Ctx(tmp_path, cache)
    call, outcome = run_case(case, ctx)
    assert outcome.changed == [], f"{case.id}: inputs changed: {outcome.changed}"
    if case.error is None:
        assert outcome.error is None, f"{case.id}: rejected: {outcome.error!r}"
        assert outcome.leftovers and not [p for p in outcome.leftovers if ".tmp" in p]
        if case.match:
            assert any(re.search(case.match, w) for w in outcome.warnings), outcome.warnings
        assert_doc_row(case, call, outcome, ctx)
        return
    err = outcome.error
    assert type(err) is case.error, f"{case.id}: {err!r}"
    text = str(err)
    assert str(call.file) in text  # the file
    assert re.search(case.match, text), text
    if isinstance(err, ScfmInputError):
        assert Path(err.path) == Path(call.file)
        assert err.field == case.field  # the field
        assert err.expected and re.search(case.expected, err.expected), err.expected
        assert text.startswith(f"{err.path}: {err.field}: ")
    else:
        assert f"{case.field}:" in text  # the key path
        assert re.search(case.expected, text), text  # what was expected
    assert outcome.leftovers == [], f"{case.id}: left {outcome.leftovers} in {call.out}"
    assert_doc_row(case, call, outcome, ctx)


def assert_doc_row(case: Case, call: Call, outcome: Outcome, ctx: Ctx) -> None:
    """docs/robustness.md has this case's row with the message the case gives now."""
    now = row(case, message(case, call, outcome, ctx))
    documented = doc_rows(DOC.read_text()).get(case.id)
    assert documented == now, (
        f"{DOC.relative_to(REPO)} is stale for {case.id}:\n  doc: {documented}\n  now: {now}\n"
        f"regenerate it with {REGENERATE}"
    )


def row(case: Case, text: str) -> str:
    """The catalogue row of ``case`` whose (normalised) message is ``text``."""
    cell = "<br>".join(f"`{part}`" for part in text.replace("|", "\\|").splitlines())
    return f"| {case.stage} | {case.malformed} | {cell} | `{case.id}` |"


def markdown(cache: Path) -> str:
    """The catalogue table: stage | malformed input | exact message | test id."""
    lines = list(HEADER)
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = Ctx(Path(tmp), cache)
            try:
                call, outcome = run_case(case, ctx)
            except pytest.skip.Exception as skip:  # cannot be built here: keep the doc's row
                print(f"{case.id}: skipped ({skip.msg}); its row is kept", file=sys.stderr)
                lines.append(doc_rows(DOC.read_text()).get(case.id, row(case, "(not run)")))
                continue
            lines.append(row(case, message(case, call, outcome, ctx)))
    return "\n".join(lines) + "\n"


def _markers(doc: str) -> tuple[int, int]:
    """Offsets of the start marker and of the end marker in ``doc``; each must be there once."""
    for mark in (START, END):
        if doc.count(mark) != 1:
            raise ValueError(
                f"{DOC}: {doc.count(mark)} {mark!r} marker(s); expected exactly one "
                f"{START!r} and one {END!r} around the catalogue table (if the doc was "
                f"overwritten by redirecting {REGENERATE!r} into it, restore it with git)"
            )
    start, end = doc.index(START), doc.index(END)
    if end < start:
        raise ValueError(f"{DOC}: end marker {END!r} comes before start marker {START!r}")
    return start, end


def catalogue_block(doc: str) -> str:
    """The generated table between the markers of ``doc`` (without the blank lines around it)."""
    start, end = _markers(doc)
    return doc[start + len(START) : end].strip("\n") + "\n"


def splice(doc: str, table: str) -> str:
    """``doc`` with the text between its markers replaced by ``table``; the rest kept as is."""
    start, end = _markers(doc)
    return f"{doc[: start + len(START)]}\n\n{table.strip(chr(10))}\n\n{doc[end:]}"


def doc_rows(doc: str) -> dict[str, str]:
    """Catalogue rows of ``doc`` by test id (the last cell)."""
    rows: dict[str, str] = {}
    for line in catalogue_block(doc).splitlines()[len(HEADER) :]:
        match = re.search(r"\| `([^`|]+)` \|$", line)
        rows[match.group(1) if match else line] = line
    return rows


def test_doc_catalogue_is_generated() -> None:
    """Between the markers: the header, then one row per case in CASES order, nothing else.

    Each row's message is compared with what the case gives now by test_bad_input; together
    the two make the block exactly what ``markdown()`` writes.
    """
    doc = DOC.read_text()
    block = catalogue_block(doc).splitlines()
    assert block[: len(HEADER)] == HEADER, f"{DOC}: table header changed; run {REGENERATE}"
    ids = list(doc_rows(doc))
    assert ids == [c.id for c in CASES], (
        f"{DOC}: the catalogue rows are not the cases of {Path(__file__).name}, in order "
        f"(missing: {sorted({c.id for c in CASES} - set(ids))}, "
        f"extra: {sorted(set(ids) - {c.id for c in CASES})}); run {REGENERATE}"
    )
    assert splice(doc, catalogue_block(doc)) == doc  # regenerating changes the table only


def test_regenerating_keeps_hand_written_sections() -> None:
    doc = (
        "# T\n\nintro\n\n" + START + "\n\n| old |\n\n" + END + "\n\n"
        "## Security review\n\nsee security.md\n\n## Fault injection\n\nlater\n"
    )
    new = splice(doc, "| stage |\n|---|\n| new |\n")
    assert new == doc.replace("| old |", "| stage |\n|---|\n| new |")
    assert catalogue_block(new) == "| stage |\n|---|\n| new |\n"
    assert splice(new, catalogue_block(doc)) == doc
    swapped = doc.replace(START, "@").replace(END, START).replace("@", END)
    for broken in (doc.replace(END, ""), doc + START, swapped):
        with pytest.raises(ValueError, match="marker"):
            splice(broken, "| x |\n")


def regenerate(cache: Path, *, write: bool) -> str:
    """docs/robustness.md with a fresh catalogue; written in place (atomically) if ``write``."""
    doc = splice(DOC.read_text(), markdown(cache))
    if write:
        tmp = DOC.with_name(f".{DOC.name}.tmp")
        tmp.write_text(doc)
        tmp.replace(DOC)
    return doc


if __name__ == "__main__":
    if "--probe" in sys.argv:
        with tempfile.TemporaryDirectory() as cache_dir:
            for case in CASES:
                if len(sys.argv) > 2 and case.id not in sys.argv[2:]:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    ctx = Ctx(Path(tmp), Path(cache_dir))
                    try:
                        call, out = run_case(case, ctx)
                    except Exception as exc:
                        print(f"### {case.id}: BUILD FAILED {exc!r}")
                        continue
                    e = out.error
                    print(f"### {case.id}: {type(e).__name__}")
                    print("   msg:", placeholders(str(e), call, ctx)[:600])
                    if isinstance(e, ScfmInputError):
                        print("   field:", e.field, "| expected:", e.expected)
                    print("   leftovers:", out.leftovers, "warn:", [w[:200] for w in out.warnings])
    elif "--markdown" in sys.argv:  # --stdout: print the document instead of writing it
        with tempfile.TemporaryDirectory() as cache_dir:
            text = regenerate(Path(cache_dir), write="--stdout" not in sys.argv)
        if "--stdout" in sys.argv:
            print(text, end="")
        else:
            print(f"wrote {DOC.relative_to(REPO)} ({len(CASES)} cases)", file=sys.stderr)
