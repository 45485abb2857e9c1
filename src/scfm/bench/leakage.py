"""Evaluation cells a trained run saw in training, per (run, evaluation set).

A run trains on the ``train`` split of its corpus. When an evaluation set is drawn from a dataset
of that corpus, some of its cells were training cells, and the run's scores on them are not
held-out results. Cells are matched by dataset name and cell ID (``obs_names`` of the QC'd h5ad,
the ``cell_id`` column of the shards), reading the cell IDs the corpus manifest's shards hold:
the split the shard job computed (seeded hash, ``scfm.shard.corpus.assign_splits``) and the
corpus' cell filters are both already applied there, so nothing is recomputed.

``val`` and ``test`` cells were never trained on (validation only logs losses; no checkpoint is
chosen by them), so only the ``train`` split counts as overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from scfm.errors import ScfmInputError
from scfm.shard.corpus import SPLITS
from scfm.shard.manifest import CorpusManifest

log = logging.getLogger("scfm.bench")

#: Columns of ``leakage.tsv`` (one row per trained run of an evaluation set).
COLUMNS = ["method", "corpus", "n_cells", "n_train", "n_val", "n_test", "train_fraction"]


def corpus_cell_ids(manifest: str | Path, dataset: str) -> dict[str, pd.Index]:
    """Cell IDs of ``dataset`` in each split of a corpus, read from its shards' ``cell_id``.

    Only the ``cell_id`` column is read (shards are memory-mapped Arrow IPC files).
    """
    meta = CorpusManifest.read(manifest)
    ids: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for shard in meta.shards:
        if shard.dataset != dataset:
            continue
        path = meta.resolve(shard.path)
        if not path.is_file():
            raise ScfmInputError(
                manifest,
                "shards[].path",
                f"shard {shard.path} of dataset {dataset} is missing",
                "the corpus' shard files beside its manifest (rerun the shard job)",
            )
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            column = [
                reader.get_batch(i).column("cell_id") for i in range(reader.num_record_batches)
            ]
            ids[shard.split].append(
                pa.chunked_array(column, type=pa.string()).to_numpy(zero_copy_only=False)
            )
    return {
        s: pd.Index(np.concatenate(v) if v else np.array([], dtype=object)) for s, v in ids.items()
    }


def leakage_table(
    obs_names: Iterable[str], *, dataset: str, runs: Mapping[str, str | Path]
) -> pd.DataFrame:
    """How many evaluation cells were in each run's train (val, test) split.

    ``runs`` maps a trained run to the manifest of the corpus it trained on; ``dataset`` is the
    dataset the evaluation set was drawn from. Cells of other datasets or outside the corpus'
    filters count in no split.
    """
    cells = pd.Index([str(c) for c in obs_names])
    rows = []
    for run, manifest in runs.items():
        splits = corpus_cell_ids(manifest, dataset)
        counts = {s: int(cells.isin(splits[s]).sum()) for s in SPLITS}
        rows.append(
            {
                "method": run,
                "corpus": CorpusManifest.read(manifest).corpus,
                "n_cells": len(cells),
                **{f"n_{s}": counts[s] for s in SPLITS},
                "train_fraction": counts["train"] / len(cells) if len(cells) else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def warn_leakage(table: pd.DataFrame, evalset: str) -> None:
    """A log warning per run that trained on cells of the evaluation set."""
    for rec in table.to_dict("records"):
        if rec["n_train"] > 0:
            log.warning(
                "run %s trained on %d of the %d cells of evaluation set %s (%.0f%%, corpus %s): "
                "its scores on them are not held-out results; benchmarks.%s.held_out: true "
                "evaluates only cells no run trained on (docs/benchmarks.md)",
                rec["method"],
                rec["n_train"],
                rec["n_cells"],
                evalset,
                100 * rec["train_fraction"],
                rec["corpus"],
                evalset,
            )


def trained_cells(runs: Mapping[str, str | Path], dataset: str) -> pd.Index:
    """Cell IDs of ``dataset`` that any of ``runs`` trained on (their corpora's train splits)."""
    parts = [corpus_cell_ids(manifest, dataset)["train"] for manifest in runs.values()]
    return (
        pd.Index(np.unique(np.concatenate([p.to_numpy() for p in parts])))
        if parts
        else pd.Index([])
    )


def leakage_job(
    evalset: str | Path,
    out_tsv: str | Path,
    *,
    dataset: str,
    runs: Mapping[str, str | Path],
    name: str = "",
) -> pd.DataFrame:
    """Write ``leakage.tsv`` of one evaluation set and warn about runs that trained on it."""
    from scfm.bench.evalset import read_evalset
    from scfm.bench.jobs import write_table

    adata = read_evalset(evalset, counts=False)
    table = leakage_table(adata.obs_names, dataset=dataset, runs=runs)
    warn_leakage(table, name or str(evalset))
    for rec in table.to_dict("records"):
        log.info("%s: %s", name, rec)
    write_table(table, out_tsv)
    return table
