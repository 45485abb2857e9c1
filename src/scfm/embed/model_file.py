"""A trained model file (``model.pt``) opened for inference: model, vocabulary, tokenizer.

Everything inference needs comes from ``model.pt`` (see ``docs/training.md``), except the
per-gene medians of a ``rank`` tokenizer: those live in the corpus' ``gene_stats.tsv``
(``results/corpus/<corpus>/gene_stats.tsv``), which the caller passes as ``gene_stats``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from scfm.data import Collator
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.io.download import hash_file
from scfm.models import ModelConfig, build_model
from scfm.paths import check_input
from scfm.shard.stats import inverse_medians
from scfm.tokenize.tokenizers import TokenizerConfig
from scfm.tokenize.vocab import CLS, MASK, PAD, Vocab
from scfm.train.checkpoint import MODEL_FORMAT, model_config_dict

EXPECTED = f"a model.pt written by scfm training ({MODEL_FORMAT})"
_REQUIRED = ("state_dict", "model_config", "vocab", "tokenizer", "vocab_hash")
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ModelFile:
    """The parts of a ``model.pt`` that inference uses, checked against each other.

    Use :func:`open_model_file`. ``payload`` is the loaded file (weights on CPU).
    """

    path: Path
    payload: dict[str, Any]
    config: ModelConfig
    vocab: Vocab
    tokenizer: TokenizerConfig
    inv_median: np.ndarray | None

    @property
    def run_name(self) -> str:
        """The run's name: the model file's directory (``results/train/<run>/model.pt``)."""
        name = _NAME.sub("_", self.path.resolve().parent.name).strip("_")
        return name or "scfm"

    @property
    def run_config(self) -> dict[str, Any]:
        """The resolved run config stored at export (empty if the file has none)."""
        return dict(self.payload.get("run_config") or {})

    @cached_property
    def sha256(self) -> str:
        """Checksum of the model file."""
        return hash_file(self.path)

    def build(self, device: torch.device) -> nn.Module:
        """The model with its trained weights, on ``device``, in eval mode."""
        model = build_model(self.config)
        try:
            model.load_state_dict(self.payload["state_dict"])
        except RuntimeError as e:
            raise ScfmInputError(
                self.path, "state_dict", f"does not fit the model_config ({e})", EXPECTED
            ) from None
        return model.to(device).eval()

    def collator(self, *, mask_ratio: float = 0.0) -> Collator:
        """The training collator's settings (length, padding, special tokens) for this model."""
        special = self.vocab.special_ids()
        loader = self.run_config.get("loader") or {}
        return Collator(
            max_len=self.config.max_len,
            value_kind=self.config.value_kind,
            n_value_tokens=self.config.n_value_tokens,
            pad_id=special[PAD],
            cls_id=special[CLS],
            mask_id=special.get(MASK),
            pad_to=loader.get("pad_to", "longest"),
            mask_ratio=mask_ratio,
        )


def open_model_file(path: str | Path, *, gene_stats: str | Path | None = None) -> ModelFile:
    """Load and check a ``model.pt``; rebuild its vocabulary and tokenizer.

    Parameters
    ----------
    path
        The model file.
    gene_stats
        The training corpus' ``gene_stats.tsv``; needed (only) by ``rank`` tokenizers.

    Raises
    ------
    ScfmInputError
        Not a readable scfm model file, inconsistent contents, or a rank model without (or
        with the wrong) gene statistics.
    """
    path = Path(path)
    payload = _load(path)
    try:
        config = ModelConfig.from_dict(model_config_dict(payload))
    except (ScfmConfigError, TypeError) as e:
        raise ScfmInputError(path, "model_config", f"invalid ({e})", EXPECTED) from None
    vocab = _vocab(path, payload)
    if len(vocab) != config.vocab_size:
        raise ScfmInputError(
            path, "vocab", f"{len(vocab)} tokens", f"vocab_size {config.vocab_size} of the model"
        )
    tokenizer = _tokenizer(path, payload["tokenizer"])
    if tokenizer.value_kind != config.value_kind:
        raise ScfmInputError(
            path,
            "tokenizer",
            f"value kind {tokenizer.value_kind!r} != the model's {config.value_kind!r}",
            EXPECTED,
        )
    inv_median = None
    if tokenizer.kind == "rank":
        inv_median = _inverse_medians(path, gene_stats, vocab)
    return ModelFile(path, payload, config, vocab, tokenizer, inv_median)


def _load(path: Path) -> dict[str, Any]:
    check_input(path, "file", EXPECTED)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a file that is not a model
        what = str(e).splitlines()[0][:120] if isinstance(e, OSError) else type(e).__name__
        raise ScfmInputError(
            path, "file", f"not loadable with torch.load(weights_only=True) ({what})", EXPECTED
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ScfmInputError(path, "format", f"{found!r}", EXPECTED)
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ScfmInputError(path, missing[0], "missing", EXPECTED)
    return payload


def _vocab(path: Path, payload: dict[str, Any]) -> Vocab:
    raw = payload["vocab"]
    try:
        tokens = [str(t) for t in raw["token"]]
        table = pd.DataFrame(
            {
                "token_id": np.arange(len(tokens)),
                "token": tokens,
                "kind": [str(k) for k in raw["kind"]],
                "gene_symbol": [str(s) for s in raw["gene_symbol"]],
                "n_cells": np.zeros(len(tokens), np.int64),
            }
        )
        vocab = Vocab(table, path=path)
    except (KeyError, TypeError, ValueError) as e:
        raise ScfmInputError(
            path, "vocab", f"not lists token/kind/gene_symbol ({e})", EXPECTED
        ) from None
    if vocab.hash != payload["vocab_hash"]:
        raise ScfmInputError(
            path,
            "vocab_hash",
            f"{payload['vocab_hash']!r} does not match its vocabulary ({vocab.hash})",
            "an undamaged model file",
        )
    return vocab


def _tokenizer(path: Path, params: Any) -> TokenizerConfig:
    fields = {f.name for f in dataclasses.fields(TokenizerConfig)}
    if not isinstance(params, dict):
        raise ScfmInputError(path, "tokenizer", repr(params), "the tokenizer parameters")
    unknown = sorted(set(params) - fields - {"name"})
    if unknown:
        raise ScfmInputError(
            path, "tokenizer", f"unknown parameters {unknown}", "parameters of this scfm version"
        )
    try:
        return TokenizerConfig(**{k: v for k, v in params.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise ScfmInputError(path, "tokenizer", f"invalid ({e})", EXPECTED) from None


def _inverse_medians(path: Path, gene_stats: str | Path | None, vocab: Vocab) -> np.ndarray:
    if gene_stats is None:
        raise ScfmInputError(
            path,
            "tokenizer",
            "a rank tokenizer needs the training corpus' per-gene medians, which model.pt "
            "does not store",
            "gene_stats= (CLI --gene-stats) naming results/corpus/<corpus>/gene_stats.tsv",
        )
    stats = Path(gene_stats)
    check_input(stats, "file", "a gene_stats.tsv (token_id, token, ...)")  # not a FIFO
    try:
        table = pd.read_csv(stats, sep="\t", dtype={"token": str}, keep_default_na=False)
        ids, tokens = table["token_id"].to_numpy(), table["token"].astype(str).tolist()
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as e:
        raise ScfmInputError(
            stats, "file", f"not readable ({e})", "a gene_stats.tsv (token_id, token, ...)"
        ) from None
    if not all(
        0 <= i < len(vocab) and vocab.tokens[i] == t for i, t in zip(ids, tokens, strict=True)
    ):
        raise ScfmInputError(
            stats,
            "token",
            "token ids do not match the model's vocabulary",
            f"the gene statistics of the corpus the model was trained on (vocab {vocab.hash})",
        )
    return inverse_medians(stats, len(vocab))
