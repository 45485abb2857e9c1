"""The binary tokenizer (scATAC): accessible features = 1, sampled inaccessible ones = 0."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scfm.tokenize.tokenizers import TokenizerConfig, cell_seeds, tokenize_csr

N_SPECIAL = 4


def _block(n=40, g=300, density=0.05, seed=0):
    X = sp.random(n, g, density=density, format="csr", random_state=seed, dtype=np.float64)
    X.data = np.ceil(X.data * 3)  # counts 1..3: only "accessible or not" matters
    return X


def _tok(X, *, max_len=32, negatives=1.0, seed=0, col=None):
    cfg = TokenizerConfig(kind="binary", max_len=max_len, negatives=negatives, seed=seed)
    col = np.arange(X.shape[1], dtype=np.int32) + N_SPECIAL if col is None else col
    return tokenize_csr(
        X,
        col,
        cfg,
        n_special=N_SPECIAL,
        n_vocab=X.shape[1] + N_SPECIAL,
        seeds=cell_seeds(seed, "d", np.arange(X.shape[0])),
    )


def test_values_mark_accessibility_and_counts_follow_the_definition():
    X = _block()
    max_len, neg = 32, 1.0
    t = _tok(X, max_len=max_len, negatives=neg)
    budget = max_len - int(np.floor(max_len * neg / (1 + neg)))
    for i in range(X.shape[0]):
        genes = t.genes[t.offsets[i] : t.offsets[i + 1]]
        vals = t.values[t.offsets[i] : t.offsets[i + 1]]
        accessible = set(X[i].indices[X[i].data > 0] + N_SPECIAL)
        n_pos = min(len(accessible), budget)
        assert (vals == 1).sum() == n_pos
        assert (vals == 0).sum() == min(max_len - n_pos, int(np.ceil(n_pos * neg)))
        assert all((g in accessible) == bool(v) for g, v in zip(genes, vals, strict=True))
        assert len(set(genes)) == len(genes) and (np.diff(genes) > 0).all()  # vocabulary order
        assert genes.min() >= N_SPECIAL


def test_negatives_ratio_zero_and_subsampled_positives():
    X = _block(density=0.3)  # ~90 accessible per cell > max_len
    t = _tok(X, max_len=16, negatives=0.0)
    assert (t.values == 1).all() and (np.diff(t.offsets) == 16).all()
    t3 = _tok(X, max_len=16, negatives=3.0)  # 4 positives + 12 negatives
    per_cell = [t3.values[t3.offsets[i] : t3.offsets[i + 1]] for i in range(X.shape[0])]
    assert all((v == 1).sum() == 4 and (v == 0).sum() == 12 for v in per_cell)


def test_seeded_and_independent_of_chunking():
    X = _block()
    a, b = _tok(X, seed=1), _tok(X, seed=1)
    np.testing.assert_array_equal(a.genes, b.genes)
    np.testing.assert_array_equal(a.values, b.values)
    half = _tok(X[:20], seed=1)
    np.testing.assert_array_equal(half.genes, a.genes[: a.offsets[20]])
    assert not np.array_equal(_tok(X, seed=2).genes, a.genes)


def test_features_outside_the_vocabulary_are_ignored():
    X = _block()
    col = np.arange(X.shape[1], dtype=np.int32) + N_SPECIAL
    col[::2] = -1
    t = _tok(X, col=col)
    assert not np.isin(t.genes[t.values == 1], col[::2]).any()


def test_config_checks():
    assert TokenizerConfig(kind="binary").n_value_tokens == 2
    assert TokenizerConfig(kind="binary").params()["negatives"] == 1.0
    with pytest.raises(ValueError, match="negatives"):
        TokenizerConfig(kind="binary", negatives=-1)
    with pytest.raises(ValueError, match="binary takes the accessible"):
        TokenizerConfig(kind="binary", genes="panel")
