"""Training objectives, their heads, and the trivial predictors every loss is logged next to.

An objective is an ``nn.Module`` called as ``objective(model, batch, outputs)`` that returns
:class:`ObjectiveResult` ``(loss, n, extra)``: ``loss`` a scalar mean over ``n`` positions
(or cells), ``extra`` a few floats for the log. The trainer minimises
``sum(o.weight * o(model, batch, outputs).loss)``. Objectives own their heads (a linear map
from ``outputs["position_states"]``), so **their parameters must be optimised and
checkpointed with the model's** (e.g. keep them in one ``nn.ModuleDict``).

Objectives (``value_kind`` in brackets; all but "contrastive" and "kl" score the masked
positions ``batch["mask"]``):

- "mse" [bin, count, float]: squared error of a scalar prediction against the numeric target
  (:func:`numeric_targets`: the bin index, ``log1p(count)``, the float value).
- "ce" [bin, count, none]: softmax cross-entropy over the ``n_value_tokens`` value classes;
  for "none" over gene ids, the logits tied to the model's ``gene_embedding`` (as in BERT).
  Kept to reproduce the failure of count tokens trained with plain CE (loss stuck at ln V).
- "ordinal" [bin, count]: cumulative-link (proportional-odds) model, McCullagh (1980),
  "Regression models for ordinal data", JRSS B 42(2):109-142, eq. (2.4): with a scalar score
  ``s`` per position and ordered thresholds ``theta_0 < ... < theta_{K-2}``,
  ``P(y <= k) = sigmoid(theta_k - s)``, so
  ``P(y = k) = sigmoid(theta_k - s) - sigmoid(theta_{k-1} - s)`` (``theta_{-1} = -inf``,
  ``theta_{K-1} = +inf``), and the loss is ``-log P(y = target)``. Predicting a class far
  from the target costs more than predicting a neighbour, which CE ignores. The thresholds
  start at ``logit(k / K)``, where a zero score is the uniform distribution (loss ln K).
- "contrastive" [any]: two random gene subsets of each cell (each position kept with
  probability ``keep``, unmasked original values) are encoded by two more model calls; the
  cell embeddings, projected and L2-normalised, are matched by a symmetric InfoNCE (CLIP,
  Radford et al. 2021) at ``temperature``.
- "kl" [vae models]: the VAE's KL divergence summed over the batch's cells, divided by its
  gene positions: with the per-position masked losses this is the evidence lower bound per
  gene position, so weight 1 is the plain VAE and another weight the beta of a beta-VAE
  (Higgins et al. 2017). A per-cell KL next to per-position means would otherwise swamp
  the reconstruction and collapse the posterior.

Trivial predictors (:func:`trivial_losses`, from :class:`ValueStats` of the train split)
score the *same* masked positions: "uniform" (ln K), "marginal" (the train value histogram),
"per_gene" (each gene's histogram), accuracies of the majority and per-gene mode classes;
for "mse" the global and per-gene means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.errors import ScfmConfigError
from scfm.models.config import ModelConfig

# --------------------------------------------------------------------------- API


@dataclass
class ObjectiveResult:
    """One objective's value on a batch: mean ``loss`` over ``n`` items, plus log extras."""

    loss: Tensor
    n: int
    extra: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: ``name`` (registry key), ``weight`` and the value kinds it supports."""

    name: ClassVar[str]
    value_kinds: ClassVar[tuple[str, ...]] = ("bin", "count", "float", "none")

    def __init__(self, cfg: ModelConfig, weight: float) -> None:
        super().__init__()
        if cfg.value_kind not in self.value_kinds:
            raise ScfmConfigError(
                [f"{self.name}: not defined for value_kind {cfg.value_kind!r}"],
                source="objectives",
            )
        self.cfg, self.weight = cfg, float(weight)

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> ObjectiveResult:
        """Loss on ``batch`` given the model's ``outputs`` (``model`` for extra calls/ties)."""
        raise NotImplementedError


def numeric_targets(values: Tensor, value_kind: str) -> Tensor:
    """Values as regression targets (float32): bin index, ``log1p(count)``, float as is."""
    v = values.float()
    return torch.log1p(v.clamp(min=0)) if value_kind == "count" else v


def _masked_states(
    batch: Mapping[str, Any], outputs: Mapping[str, Any]
) -> tuple[Tensor, Tensor, int]:
    mask = batch.get("mask")
    if mask is None:
        raise ValueError("masked objectives need batch['mask'] (set mask_ratio > 0)")
    states = outputs["position_states"]
    return states[mask], mask, int(mask.sum())


def _empty(states: Tensor) -> ObjectiveResult:
    # Zero that still touches the graph, so every parameter gets a (zero) gradient.
    return ObjectiveResult(states.sum() * 0.0, 0, {})


def _core(model: nn.Module) -> nn.Module:
    """The model behind DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# --------------------------------------------------------------------------- objectives


class MSEObjective(Objective):
    """Masked value regression (squared error on :func:`numeric_targets`)."""

    name = "mse"
    value_kinds = ("bin", "count", "float")

    def __init__(self, cfg: ModelConfig, weight: float) -> None:
        super().__init__(cfg, weight)
        self.head = nn.Linear(cfg.state_dim, 1)

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> ObjectiveResult:
        """Mean squared error at masked positions."""
        states, mask, n = _masked_states(batch, outputs)
        if n == 0:
            return _empty(states)
        pred = self.head(states).squeeze(-1).float()
        target = numeric_targets(batch["target_values"][mask], self.cfg.value_kind)
        loss = F.mse_loss(pred, target)
        return ObjectiveResult(loss, n, {})


class CEObjective(Objective):
    """Plain cross-entropy over value tokens (bin/count) or gene ids (none)."""

    name = "ce"
    value_kinds = ("bin", "count", "none")

    def __init__(self, cfg: ModelConfig, weight: float) -> None:
        super().__init__(cfg, weight)
        if cfg.value_kind == "none":
            self.head = None  # tied to the model's gene embedding
            self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        else:
            assert cfg.n_value_tokens is not None
            self.head = nn.Linear(cfg.state_dim, cfg.n_value_tokens)

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> ObjectiveResult:
        """Mean cross-entropy at masked positions; ``extra["accuracy"]``."""
        states, mask, n = _masked_states(batch, outputs)
        if n == 0:
            return _empty(states)
        if self.head is None:
            emb = _core(model).gene_embedding.weight
            logits = states @ emb.to(states.dtype).t() + self.bias.to(states.dtype)
            target = batch["target_genes"][mask]
        else:
            logits = self.head(states)
            target = batch["target_values"][mask]
        logits = logits.float()
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return ObjectiveResult(loss, n, {"accuracy": float(acc)})


def ordinal_thresholds_init(n_classes: int) -> Tensor:
    """``logit(k / K)`` for ``k = 1..K-1``: with score 0 every class has probability 1/K."""
    k = torch.arange(1, n_classes, dtype=torch.float64)
    return torch.log(k / (n_classes - k)).float()


def ordinal_log_prob(score: Tensor, thresholds: Tensor, target: Tensor) -> Tensor:
    """Cumulative-link ``log P(y = target)`` (see the module docstring), stable in fp32.

    ``log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a))``
    for ``a = theta_k - s > b = theta_{k-1} - s``; the last term depends on the threshold gap
    only. ``score`` [N], ``thresholds`` [K-1] increasing, ``target`` [N] in ``[0, K)``.
    """
    s, th = score.float(), thresholds.float()
    inf = th.new_full((1,), math.inf)
    upper = torch.cat([th, inf])[target]
    lower = torch.cat([-inf, th])[target]
    gap_term = torch.log(-torch.expm1(lower - upper))
    return F.logsigmoid(upper - s) + F.logsigmoid(s - lower) + gap_term


def ordinal_log_probs(score: Tensor, thresholds: Tensor) -> Tensor:
    """``log P(y = k)`` for every class: [N, K] (for analysis and tests)."""
    k = thresholds.shape[0] + 1
    n = score.shape[0]
    target = torch.arange(k, device=score.device).repeat(n)
    return ordinal_log_prob(score.repeat_interleave(k), thresholds, target).view(n, k)


class OrdinalObjective(Objective):
    """Cumulative-link (proportional odds) loss over the ordered value classes."""

    name = "ordinal"
    value_kinds = ("bin", "count")

    def __init__(self, cfg: ModelConfig, weight: float) -> None:
        super().__init__(cfg, weight)
        assert cfg.n_value_tokens is not None
        self.head = nn.Linear(cfg.state_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        init = ordinal_thresholds_init(cfg.n_value_tokens)
        self.first = nn.Parameter(init[:1].clone())
        gaps = (init[1:] - init[:-1]).clamp(min=1e-3)
        self.raw_gaps = nn.Parameter(gaps + torch.log(-torch.expm1(-gaps)))  # softplus^-1

    def thresholds(self) -> Tensor:
        """Increasing thresholds [K-1] (first + cumulative softplus gaps)."""
        gaps = F.softplus(self.raw_gaps) + 1e-6
        return torch.cat([self.first, self.first + torch.cumsum(gaps, 0)])

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> ObjectiveResult:
        """Mean NLL; extras: accuracy and mean absolute class error of the median class."""
        states, mask, n = _masked_states(batch, outputs)
        if n == 0:
            return _empty(states)
        score = self.head(states).squeeze(-1).float()
        target = batch["target_values"][mask]
        th = self.thresholds()
        loss = -ordinal_log_prob(score, th, target).mean()
        with torch.no_grad():
            median = (th.unsqueeze(0) < score.unsqueeze(1)).sum(-1)  # P(y <= k) < 1/2
            err = (median - target).abs().float()
        return ObjectiveResult(
            loss, n, {"accuracy": float((err == 0).float().mean()), "mae": float(err.mean())}
        )


class ContrastiveObjective(Objective):
    """Symmetric InfoNCE between two random gene subsets of each cell."""

    name = "contrastive"

    def __init__(
        self,
        cfg: ModelConfig,
        weight: float,
        *,
        temperature: float = 0.1,
        keep: float = 0.5,
        proj_dim: int = 128,
    ) -> None:
        super().__init__(cfg, weight)
        problems = []
        if not isinstance(temperature, int | float) or not temperature > 0:
            problems.append(f"contrastive.temperature: {temperature!r} is not a number > 0")
        if not isinstance(keep, int | float) or not 0 < keep < 1:
            problems.append(f"contrastive.keep: {keep!r} is not a number in (0, 1)")
        if not isinstance(proj_dim, int) or isinstance(proj_dim, bool) or proj_dim < 0:
            problems.append(f"contrastive.proj_dim: {proj_dim!r} is not an integer >= 0")
        if problems:
            raise ScfmConfigError(problems, source="objectives")
        self.temperature, self.keep = float(temperature), float(keep)
        d = cfg.embedding_dim
        # SimCLR (Chen et al. 2020): a projection head keeps the embedding itself general.
        self.proj: nn.Module = (
            nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, proj_dim))
            if proj_dim
            else nn.Identity()
        )

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> ObjectiveResult:
        """Encode two views, InfoNCE both ways; ``extra["accuracy"]`` of view matching."""
        first, second = gene_subset_views(batch, keep=self.keep)
        z1 = F.normalize(self.proj(model(first)["cell_embedding"]).float(), dim=-1)
        z2 = F.normalize(self.proj(model(second)["cell_embedding"]).float(), dim=-1)
        logits = z1 @ z2.t() / self.temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        acc = (logits.argmax(-1) == labels).float().mean()
        return ObjectiveResult(loss, int(logits.shape[0]), {"accuracy": float(acc)})


def gene_subset_views(
    batch: Mapping[str, Any], *, keep: float = 0.5, generator: torch.Generator | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Two views of each cell, each keeping a random ``keep`` fraction of its genes.

    Dropped genes become padding (``padding_mask``), ``<cls>`` stays; masked tokens are
    restored from ``target_values`` / ``target_genes`` and ``mask`` is left out, so the views
    see the unmasked cell. ``conditions`` is passed through.
    """
    genes = batch.get("target_genes", batch["genes"])
    padding = batch["padding_mask"]
    base: dict[str, Tensor] = {"genes": genes}
    if "values" in batch:
        base["values"] = batch.get("target_values", batch["values"])
    if "conditions" in batch:
        base["conditions"] = batch["conditions"]
    views = []
    for _ in range(2):
        u = torch.rand(padding.shape, device=padding.device, generator=generator)
        drop = u >= keep
        drop[:, 0] = False
        views.append({**base, "padding_mask": padding | drop})
    return views[0], views[1]


class KLObjective(Objective):
    """The VAE's KL divergence per gene position (``sum(kl_per_cell) / n_genes``)."""

    name = "kl"

    def __init__(self, cfg: ModelConfig, weight: float) -> None:
        super().__init__(cfg, weight)
        if cfg.kind != "vae":
            raise ScfmConfigError(
                [f"kl: needs a 'vae' model, not {cfg.kind!r}"], source="objectives"
            )

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> ObjectiveResult:
        """KL summed over cells over the number of (non-pad, non-cls) gene positions."""
        genes = ~batch["padding_mask"]
        n = int(genes[:, 1:].sum())
        kl = outputs["kl_per_cell"].float().sum() / max(n, 1)
        return ObjectiveResult(kl, n, {"kl_per_cell": float(outputs["kl"].detach())})


OBJECTIVES: dict[str, type[Objective]] = {
    o.name: o
    for o in (MSEObjective, CEObjective, OrdinalObjective, ContrastiveObjective, KLObjective)
}


def build_objectives(spec: Mapping[str, Any], model_cfg: ModelConfig) -> list[Objective]:
    """Objectives from ``{name: weight}`` or ``{name: {weight: w, **params}}``.

    A VAE gets ``kl`` with weight 1 unless the spec names it.

    Raises
    ------
    ScfmConfigError
        Unknown objective or parameter, a negative or missing weight, an objective that is
        undefined for the model's value kind, or an empty spec.
    """
    spec = dict(spec)
    if model_cfg.kind == "vae" and "kl" not in spec:
        spec["kl"] = 1.0
    problems: list[str] = []
    if not spec:
        problems.append("objectives: empty (name at least one of " + ", ".join(OBJECTIVES) + ")")
    parsed = []
    for name, entry in spec.items():
        params = dict(entry) if isinstance(entry, Mapping) else {"weight": entry}
        weight = params.pop("weight", None)
        if name not in OBJECTIVES:
            problems.append(f"{name}: unknown objective (one of {', '.join(OBJECTIVES)})")
        elif isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            problems.append(f"{name}.weight: {weight!r} is not a number >= 0")
        else:
            parsed.append((name, float(weight), params))
    if problems:
        raise ScfmConfigError(problems, source="objectives")
    out = []
    for name, weight, params in parsed:
        try:
            out.append(OBJECTIVES[name](model_cfg, weight, **params))
        except TypeError as e:
            problems.append(f"{name}: bad parameters {sorted(params)} ({e})")
        except ScfmConfigError as e:
            problems += e.problems
    if problems:
        raise ScfmConfigError(problems, source="objectives")
    return out


# --------------------------------------------------------------------------- statistics


@dataclass
class ValueStats:
    """Train-split value statistics behind the trivial predictors; memory is bounded.

    Collected at every non-pad, non-``<cls>`` position (unmasked originals). Per gene: count,
    sum of :func:`numeric_targets`, and (bin/count) a histogram over ``min(K, hist_cap)``
    buckets, the last bucket pooling the classes ``>= hist_cap - 1``: at most
    ``vocab_size * hist_cap`` int32 counts however large K is (a count vocabulary of 1000
    tokens does not allocate ``vocab_size * 1000``). Within the pooled bucket the per-gene
    distribution follows the global one. Globally: the full class histogram (over gene ids
    for value kind "none").
    """

    value_kind: str
    vocab_size: int
    n_classes: int | None
    hist_cap: int
    global_hist: np.ndarray | None
    gene_count: np.ndarray
    gene_sum: np.ndarray
    gene_hist: np.ndarray | None
    prior: float = 1.0  # pseudo-cells of the global distribution in each gene's estimate

    @classmethod
    def empty(
        cls,
        *,
        value_kind: str,
        vocab_size: int,
        n_value_tokens: int | None = None,
        hist_cap: int = 64,
    ) -> ValueStats:
        """No observations yet."""
        n_classes = {"bin": n_value_tokens, "count": n_value_tokens, "none": vocab_size}.get(
            value_kind
        )
        if value_kind in ("bin", "count") and not n_value_tokens:
            raise ValueError(f"value_kind {value_kind!r} needs n_value_tokens")
        buckets = min(n_classes, hist_cap) if value_kind in ("bin", "count") else 0
        return cls(
            value_kind=value_kind,
            vocab_size=vocab_size,
            n_classes=n_classes,
            hist_cap=hist_cap,
            global_hist=np.zeros(n_classes, np.int64) if n_classes else None,
            gene_count=np.zeros(vocab_size, np.int64),
            gene_sum=np.zeros(vocab_size, np.float64),
            gene_hist=np.zeros((vocab_size, buckets), np.int32) if buckets else None,
        )

    @classmethod
    def for_model(cls, cfg: ModelConfig, *, hist_cap: int = 64) -> ValueStats:
        """Empty statistics matching a model config's vocabulary and value kind."""
        return cls.empty(
            value_kind=cfg.value_kind,
            vocab_size=cfg.vocab_size,
            n_value_tokens=cfg.n_value_tokens,
            hist_cap=hist_cap,
        )

    @classmethod
    def from_batches(
        cls, batches: Iterable[Mapping[str, Any]], cfg: ModelConfig, *, hist_cap: int = 64
    ) -> ValueStats:
        """Statistics over the given batches (e.g. a few hundred train batches)."""
        stats = cls.for_model(cfg, hist_cap=hist_cap)
        for batch in batches:
            stats.update(batch)
        return stats

    _ARRAYS: ClassVar[tuple[str, ...]] = ("global_hist", "gene_count", "gene_sum", "gene_hist")

    def to_payload(self) -> dict[str, Any]:
        """Plain values and tensors, storable in ``model.pt`` (loads with ``weights_only=True``)."""
        out: dict[str, Any] = {
            "value_kind": self.value_kind,
            "vocab_size": self.vocab_size,
            "n_classes": self.n_classes,
            "hist_cap": self.hist_cap,
            "prior": self.prior,
        }
        for name in self._ARRAYS:
            value = getattr(self, name)
            out[name] = None if value is None else torch.from_numpy(np.ascontiguousarray(value))
        return out

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ValueStats:
        """Inverse of :meth:`to_payload` (raises KeyError/TypeError/ValueError if malformed)."""
        arrays = {
            name: None
            if payload.get(name) is None
            else torch.as_tensor(payload[name]).numpy().copy()
            for name in cls._ARRAYS
        }
        return cls(
            value_kind=str(payload["value_kind"]),
            vocab_size=int(payload["vocab_size"]),
            n_classes=None if payload.get("n_classes") is None else int(payload["n_classes"]),
            hist_cap=int(payload["hist_cap"]),
            prior=float(payload.get("prior", 1.0)),
            **arrays,
        )

    def update(self, batch: Mapping[str, Any]) -> None:
        """Add a batch's (non-pad, non-cls) positions."""
        padding = batch["padding_mask"].cpu().numpy()
        pos = ~padding
        pos[:, 0] = False
        genes = batch.get("target_genes", batch["genes"]).cpu().numpy()[pos]
        if self.value_kind == "none":
            assert self.global_hist is not None
            self.global_hist += np.bincount(genes, minlength=self.vocab_size)
            self.gene_count += np.bincount(genes, minlength=self.vocab_size)
            return
        values = batch.get("target_values", batch["values"])
        numeric = numeric_targets(values, self.value_kind).cpu().numpy()[pos]
        self.gene_count += np.bincount(genes, minlength=self.vocab_size)
        self.gene_sum += np.bincount(genes, weights=numeric, minlength=self.vocab_size)
        if self.gene_hist is not None and self.global_hist is not None:
            y = np.clip(values.cpu().numpy()[pos].astype(np.int64), 0, len(self.global_hist) - 1)
            self.global_hist += np.bincount(y, minlength=len(self.global_hist))
            buckets = self.gene_hist.shape[1]
            keys = genes * buckets + np.minimum(y, buckets - 1)
            keys, counts = np.unique(keys, return_counts=True)
            flat = self.gene_hist.reshape(-1)
            flat[keys] += counts.astype(np.int32)

    # ------------------------------------------------------------------ predictors

    @property
    def n_observations(self) -> int:
        """Positions seen."""
        return int(self.gene_count.sum())

    def global_mean(self) -> float:
        """Mean numeric target over all positions."""
        return float(self.gene_sum.sum() / max(self.n_observations, 1))

    def gene_mean(self, genes: np.ndarray) -> np.ndarray:
        """Per-gene mean numeric target; the global mean for genes never seen."""
        n = self.gene_count[genes]
        return np.where(n > 0, self.gene_sum[genes] / np.maximum(n, 1), self.global_mean())

    def global_probs(self) -> np.ndarray:
        """Class distribution, Laplace-smoothed (no class has probability 0)."""
        assert self.global_hist is not None
        return (self.global_hist + 1.0) / (self.global_hist.sum() + len(self.global_hist))

    def majority_class(self) -> int:
        """Most frequent class (train mode)."""
        assert self.global_hist is not None
        return int(np.argmax(self.global_hist))

    def gene_log_probs(self, genes: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``log P_gene(y)``: each gene's histogram shrunk towards the global distribution.

        ``P_g(b) = (n_gb + prior * P(b)) / (n_g + prior)`` over buckets ``b``; a class in the
        pooled last bucket gets ``P_g(bucket) * P(y) / P(bucket)``.
        """
        assert self.gene_hist is not None
        p = self.global_probs()
        buckets = self.gene_hist.shape[1]
        p_bucket = np.concatenate([p[: buckets - 1], [p[buckets - 1 :].sum()]])
        b = np.minimum(y, buckets - 1)
        n_gb = self.gene_hist[genes, b].astype(np.float64)
        p_g = (n_gb + self.prior * p_bucket[b]) / (self.gene_count[genes] + self.prior)
        return np.log(p_g) + np.log(p[y]) - np.log(p_bucket[b])

    def gene_mode(self, genes: np.ndarray) -> np.ndarray:
        """Each gene's most frequent class (the global mode for unseen genes)."""
        assert self.gene_hist is not None and self.global_hist is not None
        buckets = self.gene_hist.shape[1]
        mode = np.argmax(self.gene_hist[genes], axis=1)
        tail = buckets - 1 + int(np.argmax(self.global_hist[buckets - 1 :]))
        mode = np.where(mode == buckets - 1, tail, mode)
        return np.where(self.gene_count[genes] > 0, mode, self.majority_class())

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | PathLike[str]) -> None:
        """Write a ``.npz`` file."""
        arrays = {
            k: v
            for k, v in (
                ("global_hist", self.global_hist),
                ("gene_count", self.gene_count),
                ("gene_sum", self.gene_sum),
                ("gene_hist", self.gene_hist),
            )
            if v is not None
        }
        meta = np.array(
            [self.value_kind, self.vocab_size, self.n_classes or 0, self.hist_cap, self.prior],
            dtype=object,
        )
        with open(path, "wb") as f:
            np.savez(f, meta=meta.astype(str), **arrays)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> ValueStats:
        """Read what :meth:`save` wrote."""
        with np.load(path) as z:
            kind, vocab, n_classes, cap, prior = z["meta"].tolist()
            return cls(
                value_kind=kind,
                vocab_size=int(vocab),
                n_classes=int(n_classes) or None,
                hist_cap=int(cap),
                global_hist=z.get("global_hist"),
                gene_count=z["gene_count"],
                gene_sum=z["gene_sum"],
                gene_hist=z.get("gene_hist"),
                prior=float(prior),
            )


def trivial_losses(
    objective_name: str, batch: Mapping[str, Any], stats: ValueStats
) -> dict[str, float]:
    """Losses of the trivial predictors on the batch's masked positions.

    "ce"/"ordinal": ``uniform`` (= ln K, K classes), ``marginal`` (train class histogram),
    ``per_gene`` (each gene's histogram; bin/count only), ``majority_acc`` and
    ``per_gene_mode_acc`` (accuracy of the train mode). "mse": ``global_mean`` and
    ``per_gene_mean``. "contrastive": ``uniform`` (= ln B). Others, or no masked position: {}.
    """
    if objective_name == "contrastive":
        return {"uniform": math.log(batch["genes"].shape[0])}
    if objective_name not in ("ce", "ordinal", "mse") or batch.get("mask") is None:
        return {}
    mask = batch["mask"].cpu().numpy()
    if not mask.any():
        return {}
    if stats.value_kind == "none":
        if objective_name != "ce":
            return {}
        y = batch["target_genes"].cpu().numpy()[mask]
        return {
            "uniform": math.log(stats.vocab_size),
            "marginal": float(-np.log(stats.global_probs()[y]).mean()),
            "majority_acc": float((y == stats.majority_class()).mean()),
        }
    genes = batch["genes"].cpu().numpy()[mask]
    target = batch["target_values"]
    if objective_name == "mse":
        t = numeric_targets(target, stats.value_kind).cpu().numpy()[mask].astype(np.float64)
        return {
            "global_mean": float(np.mean((t - stats.global_mean()) ** 2)),
            "per_gene_mean": float(np.mean((t - stats.gene_mean(genes)) ** 2)),
        }
    if stats.global_hist is None:
        return {}
    y = np.clip(target.cpu().numpy()[mask].astype(np.int64), 0, len(stats.global_hist) - 1)
    return {
        "uniform": math.log(len(stats.global_hist)),
        "marginal": float(-np.log(stats.global_probs()[y]).mean()),
        "per_gene": float(-stats.gene_log_probs(genes, y).mean()),
        "majority_acc": float((y == stats.majority_class()).mean()),
        "per_gene_mode_acc": float((y == stats.gene_mode(genes)).mean()),
    }
