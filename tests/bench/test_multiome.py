"""FOSCTTM: 0 for identical pairs, ~0.5 for unrelated ones, matches a direct reading."""

from __future__ import annotations

import numpy as np
import pytest

from scfm.bench.multiome import foscttm


def _direct(a, b):
    n = len(a)
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    fa = [(d[i] < d[i, i]).sum() / (n - 1) for i in range(n)]
    fb = [(d[:, j] < d[j, j]).sum() / (n - 1) for j in range(n)]
    return (np.mean(fa) + np.mean(fb)) / 2


def test_matches_the_definition_and_its_bounds():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 5))
    noisy = a + rng.normal(scale=0.5, size=a.shape)
    assert foscttm(a, a) == 0.0
    assert foscttm(a, noisy, chunk=64) == pytest.approx(_direct(a, noisy), abs=1e-12)
    assert 0 < foscttm(a, noisy) < 0.1
    assert foscttm(a, rng.normal(size=a.shape)) == pytest.approx(0.5, abs=0.05)


def test_shapes_must_pair():
    with pytest.raises(ValueError, match="equal shapes"):
        foscttm(np.zeros((3, 2)), np.zeros((4, 2)))
