"""Which cells of a dataset belong to a corpus, and to which split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.errors import ScfmInputError

SPLITS = ("train", "val", "test")
UNIT_COLUMN = {"cell": None, "donor": "donor", "dataset": "dataset"}


def select_cells(
    obs: pd.DataFrame, filters: Mapping[str, Sequence[Any]] | None, *, path: str | Path
) -> np.ndarray:
    """Mask of cells whose obs values are among the listed ones (``corpora.<c>.filters.<ds>``)."""
    mask = np.ones(len(obs), bool)
    for column, values in (filters or {}).items():
        if column not in obs:
            raise ScfmInputError(
                path,
                f"obs/{column}",
                "column named in the corpus filter not found",
                f"one of {sorted(obs.columns)}",
            )
        mask &= obs[column].astype(str).isin([str(v) for v in values]).to_numpy()
    return mask


def assign_splits(
    obs: pd.DataFrame,
    *,
    dataset: str,
    by: str = "cell",
    val: float = 0.05,
    test: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """``train``/``val``/``test`` per cell from a seeded hash of its unit (cell, donor or dataset).

    A unit's split depends only on the seed, the dataset name and the unit's name: it does not
    change when cells or datasets are added, and all cells of a donor (or dataset) stay together.
    """
    if not (0 <= val <= 1 and 0 <= test <= 1 and val + test <= 1):
        raise ValueError(
            f"split fractions val={val}, test={test}: each in [0, 1] and val + test <= 1"
        )
    column = UNIT_COLUMN[by]
    units = obs.index.astype(str) if column is None else obs[column].astype(str)
    keys = np.asarray(dataset + "\x1f" + pd.Index(units).astype(str), dtype=object)
    h = pd.util.hash_array(keys, hash_key=f"scfm{seed:012d}"[-16:], categorize=True)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    return np.where(u < test, "test", np.where(u < test + val, "val", "train"))
