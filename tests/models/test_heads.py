"""Objectives, ordinal loss, contrastive views, ValueStats and the trivial predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _batches import MAX_LEN, N_VALUES, VOCAB, make_cfg
from _batches import make_batch as _make_batch
from torch import nn

from scfm.data import Collator
from scfm.errors import ScfmConfigError
from scfm.models import ValueStats, build_model, build_objectives, trivial_losses
from scfm.models.heads import (
    ContrastiveObjective,
    gene_subset_views,
    ordinal_log_prob,
    ordinal_log_probs,
    ordinal_thresholds_init,
)

LENGTHS = [5, 12, 15, 1, 9, 14]


def make_batch(value_kind: str, *, mask_ratio: float = 0.3, seed: int = 0) -> dict:
    return _make_batch(value_kind, LENGTHS, mask_ratio=mask_ratio, seed=seed)


SPECS = {
    "bin": {"mse": 1.0, "ce": 0.5, "ordinal": 1.0, "contrastive": {"weight": 0.1}},
    "count": {"mse": 1.0, "ce": 0.5, "ordinal": 1.0, "contrastive": {"weight": 0.1}},
    "float": {"mse": 1.0, "contrastive": {"weight": 0.1, "temperature": 0.2}},
    "none": {"ce": 1.0, "contrastive": {"weight": 0.1, "keep": 0.6}},
}


# --------------------------------------------------------------------------- every objective


@pytest.mark.parametrize("kind", ["transformer", "mlp", "vae"])
@pytest.mark.parametrize("value_kind", list(SPECS))
def test_objectives_forward_backward(value_kind: str, kind: str) -> None:
    torch.manual_seed(0)
    cfg = make_cfg(value_kind, kind=kind, pooling="mean")
    model = build_model(cfg)
    objectives = build_objectives(SPECS[value_kind], cfg)
    names = [o.name for o in objectives]
    assert names == list(SPECS[value_kind]) + (["kl"] if kind == "vae" else [])
    batch = make_batch(value_kind)
    out = model(batch)
    n_masked = int(batch["mask"].sum())
    total = torch.zeros(())
    for obj in objectives:
        res = obj(model, batch, out)
        assert res.loss.ndim == 0 and torch.isfinite(res.loss), obj.name
        expected_n = {"contrastive": len(LENGTHS), "kl": sum(min(k, MAX_LEN - 1) for k in LENGTHS)}
        expected_n = expected_n.get(obj.name, n_masked)
        assert res.n == expected_n
        assert all(isinstance(v, float) for v in res.extra.values())
        total = total + obj.weight * res.loss
    total.backward()
    params = list(model.parameters()) + [p for o in objectives for p in o.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_ce_for_rank_tokens_is_tied_to_gene_embedding() -> None:
    torch.manual_seed(0)
    cfg = make_cfg("none")
    model = build_model(cfg)
    (ce,) = build_objectives({"ce": 1.0}, cfg)
    assert sum(p.numel() for p in ce.parameters()) == VOCAB  # a bias only
    batch = make_batch("none")
    res = ce(model, batch, model(batch))
    res.loss.backward()
    assert model.gene_embedding.weight.grad.abs().sum() > 0


def test_no_masked_positions_gives_zero_loss_with_a_graph() -> None:
    cfg = make_cfg("bin")
    model = build_model(cfg)
    batch = make_batch("bin")
    batch["mask"] = torch.zeros_like(batch["mask"])
    for obj in build_objectives({"mse": 1, "ce": 1, "ordinal": 1}, cfg):
        res = obj(model, batch, model(batch))
        assert res.n == 0 and float(res.loss.detach()) == 0.0
        res.loss.backward()


def test_build_objectives_validation() -> None:
    cfg = make_cfg("float")
    with pytest.raises(ScfmConfigError) as err:
        build_objectives({"bogus": 1, "mse": -1, "ce": True}, cfg)
    assert "bogus" in str(err.value) and "mse.weight" in str(err.value)
    assert "ce.weight" in str(err.value)
    with pytest.raises(ScfmConfigError, match="ordinal: not defined for value_kind 'float'"):
        build_objectives({"ordinal": 1}, cfg)
    with pytest.raises(ScfmConfigError, match="mse: not defined"):
        build_objectives({"mse": 1}, make_cfg("none"))
    with pytest.raises(ScfmConfigError, match="bad parameters"):
        build_objectives({"contrastive": {"weight": 1, "temprature": 0.1}}, cfg)
    with pytest.raises(ScfmConfigError, match="temperature"):
        build_objectives({"contrastive": {"weight": 1, "temperature": 0}}, cfg)
    with pytest.raises(ScfmConfigError, match="vae"):
        build_objectives({"kl": 1}, cfg)
    with pytest.raises(ScfmConfigError, match="empty"):
        build_objectives({}, cfg)
    mse, kl = build_objectives({"mse": 1}, make_cfg("float", kind="vae"))
    assert mse.name == "mse"
    assert (kl.name, kl.weight) == ("kl", 1.0)
    (kl,) = build_objectives({"kl": 0.01}, make_cfg("float", kind="vae"))
    assert kl.weight == 0.01


# --------------------------------------------------------------------------- ordinal


def test_ordinal_probabilities_are_a_distribution() -> None:
    torch.manual_seed(0)
    th = torch.sort(torch.randn(6) * 3).values
    score = torch.randn(50) * 4
    logp = ordinal_log_probs(score, th)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(50))
    # against the textbook difference of cumulative sigmoids in float64
    cum = torch.sigmoid(th.double()[None, :] - score.double()[:, None])
    cum = torch.cat([torch.zeros(50, 1, dtype=torch.float64), cum, torch.ones(50, 1)], 1)
    torch.testing.assert_close(
        logp.double(), torch.log(cum[:, 1:] - cum[:, :-1]), atol=1e-5, rtol=1e-4
    )


def test_ordinal_init_is_uniform_and_objective_starts_at_ln_k() -> None:
    th = ordinal_thresholds_init(N_VALUES)
    torch.testing.assert_close(
        ordinal_log_probs(torch.zeros(1), th).exp(), torch.full((1, N_VALUES), 1 / N_VALUES)
    )
    cfg = make_cfg("bin")
    model = build_model(cfg)
    (ordinal,) = build_objectives({"ordinal": 1}, cfg)
    batch = make_batch("bin")
    res = ordinal(model, batch, model(batch))
    assert float(res.loss.detach()) == pytest.approx(math.log(N_VALUES), abs=1e-5)


def test_ordinal_penalises_distance_unlike_ce() -> None:
    k = 10
    th = torch.arange(k - 1, dtype=torch.float32) + 0.5  # score s predicts class round(s)
    target = torch.tensor([3])
    one_off = -ordinal_log_prob(torch.tensor([4.0]), th, target)
    four_off = -ordinal_log_prob(torch.tensor([7.0]), th, target)
    exact = -ordinal_log_prob(torch.tensor([3.0]), th, target)
    assert float(exact) < float(one_off) < float(four_off)
    # CE with the same confident mode on a wrong class cannot tell the two apart
    logits_one = F.one_hot(torch.tensor([4]), k).float() * 5
    logits_four = F.one_hot(torch.tensor([7]), k).float() * 5
    assert float(F.cross_entropy(logits_one, target)) == float(F.cross_entropy(logits_four, target))


def test_ordinal_gradients_finite_at_the_extreme_classes() -> None:
    th = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    score = torch.tensor([-50.0, 0.0, 50.0, 3.0], requires_grad=True)
    loss = -ordinal_log_prob(score, th, torch.tensor([0, 3, 3, 0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(th.grad).all()
    assert torch.isfinite(score.grad).all()


# --------------------------------------------------------------------------- contrastive


def test_gene_subset_views() -> None:
    batch = make_batch("bin", mask_ratio=0.5)
    gen = torch.Generator().manual_seed(0)
    a, b = gene_subset_views(batch, keep=0.5, generator=gen)
    pad = batch["padding_mask"]
    for view in (a, b):
        assert "mask" not in view
        assert torch.equal(view["values"], batch["target_values"])  # masked values restored
        assert not view["padding_mask"][:, 0].any()  # <cls> kept
        assert (view["padding_mask"] | ~pad).all()  # pads stay pads
    kept = (~a["padding_mask"]).sum() - len(LENGTHS)
    assert 0.3 < float(kept) / float((~pad).sum() - len(LENGTHS)) < 0.7
    assert not torch.equal(a["padding_mask"], b["padding_mask"])


class FixedEmbeddings(nn.Module):
    """Returns preset embeddings for the first and second call."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor) -> None:
        super().__init__()
        self.queue = [first, second]

    def forward(self, batch: dict) -> dict:
        return {"cell_embedding": self.queue.pop(0)}


def test_infonce_matches_hand_computation() -> None:
    cfg = make_cfg("bin")
    obj = ContrastiveObjective(cfg, 1.0, temperature=0.5, proj_dim=0)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    batch = make_batch("bin")
    batch = {k: v[:3] for k, v in batch.items()}
    res = obj(FixedEmbeddings(z1, z2), batch, {})
    u1 = z1 / z1.norm(dim=1, keepdim=True)
    u2 = z2 / z2.norm(dim=1, keepdim=True)
    sim = (u1 @ u2.T / 0.5).tolist()
    row = [-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(3)]
    col = [-sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(3))) for i in range(3)]
    assert float(res.loss.detach()) == pytest.approx((sum(row) + sum(col)) / 6, rel=1e-5)
    assert res.n == 3
    assert trivial_losses("contrastive", batch, None) == {"uniform": math.log(3)}


# --------------------------------------------------------------------------- trivial predictors


def hand_stats_and_batch() -> tuple[ValueStats, dict]:
    """Train cells with known values; an eval batch masking genes 10, 11, 13 (13 unseen)."""
    k = 4
    collator = Collator(max_len=5, value_kind="bin", n_value_tokens=k, mask_ratio=0.0)
    genes = [np.array([10, 11]), np.array([10, 11, 12]), np.array([10]), np.array([12])]
    values = [np.array([3, 0]), np.array([3, 0, 0]), np.array([1]), np.array([0])]
    stats = ValueStats.empty(value_kind="bin", vocab_size=20, n_value_tokens=k)
    stats.update(collator(genes, values))
    batch = {
        "genes": torch.tensor([[1, 10, 11, 13, 12]]),
        "padding_mask": torch.zeros(1, 5, dtype=torch.bool),
        "mask": torch.tensor([[False, True, True, True, False]]),
        "target_values": torch.tensor([[0, 2, 0, 1, 3]]),
        "values": torch.tensor([[0, k, k, k, 3]]),
    }
    return stats, batch


def test_trivial_predictors_by_hand() -> None:
    stats, batch = hand_stats_and_batch()
    # train values: gene 10 -> 3, 3, 1; gene 11 -> 0, 0; gene 12 -> 0, 0. Histogram [4, 1, 0, 2].
    assert stats.global_hist.tolist() == [4, 1, 0, 2]
    assert stats.majority_class() == 0
    assert stats.global_mean() == pytest.approx(1.0)
    mse = trivial_losses("mse", batch, stats)
    # targets 2, 0, 1 at genes 10, 11, 13; per-gene means 7/3, 0, global 1
    assert mse["per_gene_mean"] == pytest.approx(((2 - 7 / 3) ** 2 + 0 + 0) / 3)
    assert mse["global_mean"] == pytest.approx((1 + 1 + 0) / 3)
    ce = trivial_losses("ce", batch, stats)
    assert ce["uniform"] == math.log(4)  # exactly ln K
    assert ce["majority_acc"] == pytest.approx(1 / 3)  # predicts 0: right at gene 11 only
    assert ce["per_gene_mode_acc"] == pytest.approx(1 / 3)  # modes 3, 0, (unseen) 0
    p = np.array([5, 2, 1, 3]) / 11  # Laplace-smoothed histogram
    assert ce["marginal"] == pytest.approx(-np.log(p[[2, 0, 1]]).mean())
    # per gene, shrunk towards p with one pseudo-cell: gene 10 (n=3, class 2 never seen)...
    per_gene = [(0 + p[2]) / 4, (2 + p[0]) / 3, p[1]]
    assert ce["per_gene"] == pytest.approx(-np.log(per_gene).mean())
    assert trivial_losses("ordinal", batch, stats) == ce


def test_uniform_is_ln_k_for_every_kind() -> None:
    for value_kind, k in (("bin", N_VALUES), ("count", N_VALUES), ("none", VOCAB)):
        batch = make_batch(value_kind)
        stats = ValueStats.from_batches([batch], make_cfg(value_kind))
        assert trivial_losses("ce", batch, stats)["uniform"] == math.log(k)
    batch = make_batch("bin")
    stats = ValueStats.from_batches([batch], make_cfg("bin"))
    assert trivial_losses("kl", batch, stats) == {}


def test_capped_gene_histogram_stays_a_distribution(tmp_path) -> None:
    k, cap = 12, 4
    rng = np.random.default_rng(0)
    collator = Collator(max_len=30, value_kind="count", n_value_tokens=k, mask_ratio=0.0)
    genes = [rng.choice(np.arange(6, 30), 20, replace=False) for _ in range(50)]
    values = [rng.integers(0, k, 20) for _ in range(50)]
    stats = ValueStats.empty(value_kind="count", vocab_size=40, n_value_tokens=k, hist_cap=cap)
    stats.update(collator(genes, values))
    assert stats.gene_hist.shape == (40, cap)  # bounded, not 40 x 12
    assert stats.gene_hist.sum() == stats.global_hist.sum() == 1000
    for g in (6, 17, 35):  # 35: never seen
        p = np.exp(stats.gene_log_probs(np.full(k, g), np.arange(k)))
        assert p.sum() == pytest.approx(1.0)
    assert stats.gene_mode(np.array([35]))[0] == stats.majority_class()
    stats.save(tmp_path / "stats.npz")
    back = ValueStats.load(tmp_path / "stats.npz")
    assert back.value_kind == "count" and back.n_classes == k and back.hist_cap == cap
    np.testing.assert_array_equal(back.gene_hist, stats.gene_hist)
    np.testing.assert_array_equal(back.gene_sum, stats.gene_sum)
