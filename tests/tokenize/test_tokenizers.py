"""Tokenizers against direct readings of their definitions (scfm.tokenize.tokenizers docstring)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.errors import ScfmInputError
from scfm.tokenize import TokenizerConfig, Vocab, tokenize_anndata, tokenize_csr
from scfm.tokenize.tokenizers import cell_seeds
from scfm.tokenize.vocab import special_tokens

N_SPECIAL = 10


def expressed(row: np.ndarray, col_token: np.ndarray) -> list[tuple[int, int, float]]:
    """(position, token, count) of the expressed vocabulary genes of a dense row."""
    return [
        (j, int(col_token[j]), float(row[j]))
        for j in range(len(row))
        if col_token[j] >= 0 and row[j] > 0
    ]


def ref_bins(counts: list[float], n_bins: int) -> list[int]:
    m, b = len(counts), n_bins - 1
    return [1 + min(b - 1, (b * sum(c < x for c in counts)) // m) for x in counts]


def ref_top(entries: list[tuple[int, int, float]], s: int) -> list[tuple[int, int, float]]:
    """The s highest counts, ties by position, returned in position order."""
    chosen = sorted(entries, key=lambda e: (-e[2], e[0]))[:s]
    return sorted(chosen)


def reference(X: np.ndarray, col_token: np.ndarray, cfg: TokenizerConfig, inv_median=None):
    out = []
    for row in X:
        e = expressed(row, col_token)
        total = row.sum()
        if cfg.kind == "rank":
            key = [(-(c / total * cfg.target_sum * inv_median[t]), j, t) for j, t, c in e]
            out.append(([t for _, _, t in sorted(key)][: cfg.max_len], None))
            continue
        bins = (
            dict(zip([j for j, _, _ in e], ref_bins([c for *_, c in e], cfg.n_bins), strict=True))
            if e
            else {}
        )
        limit = min(cfg.top_k, cfg.max_len) if cfg.genes == "top_k" else cfg.max_len
        kept = ref_top(e, limit) if len(e) > limit else e
        genes = [t for _, t, _ in kept]
        if cfg.kind == "binned":
            vals = [bins[j] for j, _, _ in kept]
        elif cfg.kind == "counts":
            vals = [min(int(c), cfg.vocab_size - 1) for *_, c in kept]
        else:
            vals = [np.float32(np.log1p(c / total * cfg.target_sum)) for *_, c in kept]
        out.append((genes, vals))
    return out


def random_counts(rng, n=40, g=60, density=0.3, big=False):
    X = rng.negative_binomial(1, 0.4, size=(n, g)) * (rng.random((n, g)) < density)
    if big:  # exercise the radix-sort path (counts beyond the counting histogram)
        X[::3, ::7] *= 1500
    X[5] = 0  # an empty cell
    X[6, :] = 3  # all ties
    return X.astype(np.float32)


def as_lists(tokens):
    o = tokens.offsets
    genes = [tokens.genes[o[i] : o[i + 1]].tolist() for i in range(tokens.n_cells)]
    vals = (
        None
        if tokens.values is None
        else [tokens.values[o[i] : o[i + 1]].tolist() for i in range(tokens.n_cells)]
    )
    return genes, vals


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize(
    "cfg",
    [
        TokenizerConfig(kind="binned", n_bins=51, max_len=1200),
        TokenizerConfig(kind="binned", n_bins=5, max_len=8),
        TokenizerConfig(kind="binned", n_bins=2, max_len=1200),
        TokenizerConfig(kind="counts", vocab_size=6, max_len=10),
        TokenizerConfig(kind="continuous", max_len=12, target_sum=1e4),
        TokenizerConfig(kind="binned", genes="top_k", top_k=5),
        TokenizerConfig(kind="rank", max_len=9),
    ],
    ids=lambda c: f"{c.kind}-{c.genes}-{c.max_len}",
)
def test_matches_definition(cfg, big):
    rng = np.random.default_rng(1)
    X = random_counts(rng, big=big)
    col_token = np.full(X.shape[1], -1, np.int32)
    in_vocab = rng.permutation(X.shape[1])[:50]
    col_token[in_vocab] = N_SPECIAL + rng.permutation(50)  # vocabulary order != matrix order
    inv_median = rng.uniform(0.2, 5, N_SPECIAL + 50)
    got = tokenize_csr(
        sp.csr_matrix(X),
        col_token,
        cfg,
        n_special=N_SPECIAL,
        n_vocab=N_SPECIAL + 50,
        inv_median=inv_median,
    )
    genes, vals = as_lists(got)
    ref = reference(X, col_token, cfg, inv_median)
    for i, (rg, rv) in enumerate(ref):
        assert genes[i] == rg, f"cell {i}"
        if rv is None:
            assert vals is None
        elif cfg.kind == "continuous":
            np.testing.assert_allclose(vals[i], rv, rtol=1e-6)
        else:
            assert vals[i] == rv, f"cell {i}"


def test_hand_checked_example():
    X = sp.csr_matrix(np.array([[0, 3, 1, 1, 5], [1, 2, 3, 4, 5]], np.float32))
    ct = np.arange(5, dtype=np.int32) + N_SPECIAL
    t = tokenize_csr(
        X, ct, TokenizerConfig(kind="binned", n_bins=5), n_special=N_SPECIAL, n_vocab=15
    )
    # cell 0: m=4, B=4; 3 has 2 values below -> 1 + 8//4 = 3; the tied 1s -> 1; 5 -> 1 + 12//4 = 4
    assert t.genes.tolist() == [11, 12, 13, 14, 10, 11, 12, 13, 14]
    assert t.values.tolist() == [3, 1, 1, 4, 1, 1, 2, 3, 4]
    r = tokenize_csr(
        X,
        ct,
        TokenizerConfig(kind="rank", max_len=3),
        n_special=N_SPECIAL,
        n_vocab=15,
        inv_median=np.ones(15),
    )
    assert r.offsets.tolist() == [0, 3, 6] and r.genes.tolist() == [14, 11, 12, 14, 13, 12]
    assert r.values is None
    p = tokenize_csr(
        X,
        ct,
        TokenizerConfig(kind="counts", vocab_size=4, genes="panel", max_len=5),
        n_special=N_SPECIAL,
        n_vocab=15,
    )
    assert p.genes.tolist() == [10, 11, 12, 13, 14] * 2
    assert p.values.tolist() == [0, 3, 1, 1, 3, 1, 2, 3, 3, 3]


def test_random_subset_is_seeded_per_cell_and_chunk_independent():
    rng = np.random.default_rng(2)
    X = sp.csr_matrix(random_counts(rng, n=30, g=80, density=0.8))
    ct = np.arange(80, dtype=np.int32) + N_SPECIAL
    cfg = TokenizerConfig(kind="continuous", genes="random", max_len=10, seed=7)

    def run(rows, seed_cfg=cfg):
        return tokenize_csr(
            X[rows],
            ct,
            seed_cfg,
            n_special=N_SPECIAL,
            n_vocab=90,
            seeds=cell_seeds(seed_cfg.seed, "ds", rows),
        )

    whole = as_lists(run(np.arange(30)))[0]
    halves = as_lists(run(np.arange(15)))[0] + as_lists(run(np.arange(15, 30)))[0]
    assert whole == halves
    dense = X.toarray()
    for i, g in enumerate(whole):
        expressed_tokens = set((np.flatnonzero(dense[i]) + N_SPECIAL).tolist())
        assert len(g) == min(10, len(expressed_tokens)) and set(g) <= expressed_tokens
    other = as_lists(
        run(np.arange(30), TokenizerConfig(kind="continuous", genes="random", max_len=10, seed=8))
    )[0]
    assert other != whole


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "bpe"}, "kind: 'bpe' is not one of"),
        ({"kind": "binned", "max_len": 1}, "max_len: 1 is not an integer >= 2"),
        ({"kind": "binned", "n_bins": 1}, "n_bins: 1 is less than the minimum of 2"),
        ({"kind": "counts", "vocab_size": 40000}, "vocab_size: 40000 is greater than the maximum"),
        ({"kind": "binary", "negatives": -1.0}, "negatives: -1.0 is less than the minimum of 0"),
        ({"kind": "rank", "genes": "panel"}, "rank encoding orders the expressed genes"),
    ],
)
def test_bad_tokenizer_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig(**kwargs)


def test_params_keep_only_what_defines_the_tokens():
    assert TokenizerConfig(kind="binned").params() == {
        "kind": "binned",
        "max_len": 1200,
        "genes": "nonzero",
        "target_sum": 1e4,
        "n_bins": 51,
    }
    assert "seed" in TokenizerConfig(kind="counts", genes="random").params()


def vocab_for(genes: list[str]) -> Vocab:
    specials = special_tokens(2)
    table = pd.DataFrame(
        {
            "token": specials + genes,
            "kind": ["special"] * len(specials) + ["gene"] * len(genes),
            "gene_symbol": [""] * len(specials) + genes,
            "n_cells": 0,
        }
    )
    table.insert(0, "token_id", np.arange(len(table)))
    return Vocab(table)


def test_tokenize_anndata_counts_missing_genes_and_refuses_poor_overlap():
    vocab = vocab_for(["G1", "G2", "G3"])
    X = sp.csr_matrix(np.array([[5, 1, 0, 2], [0, 3, 1, 0]], np.float32))
    adata = ad.AnnData(X, var=pd.DataFrame(index=["G1", "G2", "G9", "G3"]))
    tokens, report = tokenize_anndata(adata, vocab, TokenizerConfig(kind="counts"))
    assert report["n_genes_missing"] == 1 and report["examples"] == ["G9"]
    assert report["missing_count_fraction"] == pytest.approx(1 / 12)
    g = vocab.n_special
    assert tokens.genes.tolist() == [g, g + 1, g + 2, g + 1]
    other = ad.AnnData(X, var=pd.DataFrame(index=["X1", "X2", "X3", "G1"]))
    with pytest.raises(
        ScfmInputError, match=r"user\.h5ad: var_names: 83% of the counts fall on 3 genes"
    ):
        tokenize_anndata(other, vocab, TokenizerConfig(kind="counts"), path="user.h5ad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("values", ["integer", "fractional", "huge"])
def test_totals_summed_in_the_kernel_or_by_scipy_give_the_definition(dtype, values):
    """Rank and continuous need each cell's total: the kernel sums it on its way only when that
    is exact (integer values, small sums), else scipy's sum is used; both match the definition."""
    rng = np.random.default_rng(3)
    X = random_counts(rng).astype(np.float64)
    if values == "fractional":
        if np.dtype(dtype).kind == "i":
            pytest.skip("integer matrices hold no fractions")
        X = X * rng.uniform(0.3, 1.7, X.shape)
    elif values == "huge":
        X[1] *= 3e7  # beyond float32's exact integers (2^24)
    X = X.astype(dtype)
    col_token = np.arange(X.shape[1], dtype=np.int32) + N_SPECIAL
    inv_median = rng.uniform(0.2, 5, N_SPECIAL + X.shape[1])
    for cfg in (TokenizerConfig(kind="rank", max_len=9), TokenizerConfig(kind="continuous")):
        got = tokenize_csr(
            sp.csr_matrix(X),
            col_token,
            cfg,
            n_special=N_SPECIAL,
            n_vocab=N_SPECIAL + X.shape[1],
            inv_median=inv_median,
        )
        genes, vals = as_lists(got)
        totals = np.asarray(sp.csr_matrix(X).sum(axis=1), dtype=np.float64).ravel()
        for i, row in enumerate(X):
            scale = 1e4 / totals[i] if totals[i] > 0 else 0.0
            pos = [j for j in range(len(row)) if row[j] > 0]
            if cfg.kind == "rank":  # the kernel's keys: float32 of int(count) * scale / median
                key = {j: np.float32(int(row[j]) * scale * inv_median[col_token[j]]) for j in pos}
                order = sorted(pos, key=lambda j: (-key[j], j))[: cfg.max_len]
                assert genes[i] == [int(col_token[j]) for j in order], f"cell {i}"
            else:
                assert genes[i] == [int(col_token[j]) for j in pos], f"cell {i}"
                expect = [np.float32(np.log1p(int(row[j]) * scale)) for j in pos]
                assert vals[i] == expect, f"cell {i}"
