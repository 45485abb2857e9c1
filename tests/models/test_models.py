"""Models: config validation, forward/backward on real collated batches, attention masking,
equality with a reference transformer layer, condition tokens, autocast, panel input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _batches import N_VALUES, VOCAB, make_cfg
from _batches import make_batch as _make_batch
from torch import nn

from scfm.errors import ScfmConfigError
from scfm.models import CellTransformer, ModelConfig, PanelModel, build_model
from scfm.models.transformer import Block

LENGTHS = [5, 12, 15, 1, 9]


def make_batch(value_kind: str, *, mask_ratio: float = 0.3, seed: int = 0) -> dict:
    return _make_batch(value_kind, LENGTHS, mask_ratio=mask_ratio, seed=seed)


MODELS = {
    "gelu-cls": dict(activation="gelu", pooling="cls"),
    "swiglu-mean": dict(activation="swiglu", pooling="mean"),
    "mlp": dict(kind="mlp"),
    "vae": dict(kind="vae"),
}


# --------------------------------------------------------------------------- config


def test_presets_and_derived_sizes() -> None:
    base = ModelConfig.preset("base", vocab_size=100, value_kind="float", max_len=10)
    assert (base.n_layers, base.d_model, base.n_heads) == (12, 512, 8)
    assert base.ff_hidden == 2048
    assert base.embedding_dim == 512
    swiglu = ModelConfig.preset(
        "base", vocab_size=100, value_kind="float", max_len=10, activation="swiglu"
    )
    assert swiglu.ff_hidden == 1368  # 2/3 * 2048, to a multiple of 8
    # explicit keys beat the preset; round trip through a dict
    cfg = ModelConfig.from_dict(
        {
            "preset": "small",
            "vocab_size": 9,
            "value_kind": "bin",
            "n_value_tokens": 5,
            "max_len": 4,
            "n_layers": 1,
        }
    )
    assert (cfg.n_layers, cfg.d_model) == (1, 256)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert make_cfg("none").use_positional and not make_cfg("bin").use_positional


def test_config_names_every_problem() -> None:
    with pytest.raises(ScfmConfigError) as err:
        ModelConfig(
            kind="rnn",
            vocab_size=10,
            value_kind="bin",
            max_len=1,
            d_model=30,
            n_heads=4,
            activation="relu",
            pooling="max",
            dropout=1.5,
        )
    text = str(err.value)
    for key in ("kind", "max_len", "n_value_tokens", "activation", "pooling", "dropout"):
        assert key in text
    with pytest.raises(ScfmConfigError, match="divisible"):
        make_cfg("float", d_model=30, n_heads=4)
    with pytest.raises(ScfmConfigError, match="unknown key"):
        ModelConfig.from_dict({"vocab_size": 9, "value_kind": "none", "max_len": 4, "depth": 2})
    with pytest.raises(ScfmConfigError, match="preset"):
        ModelConfig.preset("huge", vocab_size=9, value_kind="none", max_len=4)
    with pytest.raises(ScfmConfigError, match="panel"):
        make_cfg("bin", kind="mlp", panel_size=5, panel_genes=(6, 7))


# --------------------------------------------------------------------------- forward/backward


@pytest.mark.parametrize("value_kind", ["bin", "float", "none"])
@pytest.mark.parametrize("model", list(MODELS))
def test_forward_backward(model: str, value_kind: str) -> None:
    torch.manual_seed(0)
    cfg = make_cfg(value_kind, **MODELS[model])
    net = build_model(cfg)
    batch = make_batch(value_kind)
    out = net(batch)
    b, n = batch["genes"].shape
    assert out["cell_embedding"].shape == (b, cfg.embedding_dim)
    assert out["position_states"].shape == (b, n, cfg.d_model)
    if cfg.kind == "transformer":
        assert out["token_states"].shape == (b, n, cfg.d_model)
    else:
        assert out["token_states"] is None
    loss = out["cell_embedding"].square().mean() + out["position_states"].square().mean()
    if cfg.kind == "vae":
        loss = loss + out["kl"]
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.flops_per_token(n) > 0


def test_value_embedding_has_a_mask_row() -> None:
    batch = make_batch("bin", mask_ratio=0.5)
    assert (batch["values"] == N_VALUES).any()  # the collator's mask value
    net = CellTransformer(make_cfg("bin"))
    assert net.value_embedding.num_embeddings == N_VALUES + 1
    assert torch.isfinite(net(batch)["token_states"]).all()


def test_float_mask_positions_use_the_mask_vector() -> None:
    torch.manual_seed(0)
    net = CellTransformer(make_cfg("float"))
    nn.init.normal_(net.mask_value)
    batch = make_batch("float", mask_ratio=0.5)
    emb = net.embed(batch)
    changed = dict(batch, values=batch["values"] + batch["mask"].float() * 5.0)
    assert torch.equal(net.embed(changed), emb)  # masked values are never read


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("value_kind", ["bin", "float"])
def test_padding_is_masked(model: str, value_kind: str) -> None:
    """Whatever sits at pad positions changes nothing at real positions."""
    torch.manual_seed(0)
    net = build_model(make_cfg(value_kind, **MODELS[model])).eval()
    batch = make_batch(value_kind)
    pad = batch["padding_mask"]
    assert pad.any()
    noisy = dict(batch)
    noisy["genes"] = torch.where(pad, torch.randint(6, VOCAB, pad.shape), batch["genes"])
    if value_kind == "float":
        noisy["values"] = torch.where(pad, torch.rand(pad.shape) * 9, batch["values"])
    else:
        noisy["values"] = torch.where(pad, torch.randint(0, N_VALUES, pad.shape), batch["values"])
    a, b = net(batch), net(noisy)
    torch.testing.assert_close(a["cell_embedding"], b["cell_embedding"])
    keep = ~pad
    torch.testing.assert_close(a["position_states"][keep], b["position_states"][keep])


# --------------------------------------------------------------------------- reference


def _lengths_mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]


def test_gelu_block_equals_torch_transformer_layer() -> None:
    torch.manual_seed(0)
    cfg = make_cfg("float", d_model=32, n_heads=4, dropout=0.0)
    ours = Block(cfg)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.2)
    ref = nn.TransformerEncoderLayer(
        32,
        4,
        dim_feedforward=cfg.ff_hidden,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(ours.attn.out.weight)
        ref.self_attn.out_proj.bias.copy_(ours.attn.out.bias)
        ref.linear1.load_state_dict(ours.ff.up.state_dict())
        ref.linear2.load_state_dict(ours.ff.down.state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    x = torch.randn(3, 7, 32)
    pad = _lengths_mask([7, 4, 1], 7)
    got = ours(x, ~pad[:, None, None, :])
    want = ref(x, src_key_padding_mask=pad)
    torch.testing.assert_close(got[~pad], want[~pad], atol=1e-5, rtol=1e-5)


def test_swiglu_block_equals_hand_written_attention() -> None:
    torch.manual_seed(1)
    cfg = make_cfg("float", d_model=16, n_heads=2, activation="swiglu")
    block = Block(cfg)
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 16)
    pad = _lengths_mask([5, 3], 5)
    got = block(x, ~pad[:, None, None, :])

    def attention(h: torch.Tensor) -> torch.Tensor:
        q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).split(16, dim=-1)
        heads = [slice(0, 8), slice(8, 16)]
        outs = []
        for s in heads:
            scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(8)
            scores = scores.masked_fill(pad[:, None, :], float("-inf"))
            outs.append(scores.softmax(-1) @ v[..., s])
        return torch.cat(outs, -1) @ block.attn.out.weight.T + block.attn.out.bias

    def swiglu(h: torch.Tensor) -> torch.Tensor:
        f = cfg.ff_hidden
        w, bias = block.ff.up.weight, block.ff.up.bias
        gate, up = h @ w[:f].T + bias[:f], h @ w[f:].T + bias[f:]
        return (F.silu(gate) * up) @ block.ff.down.weight.T + block.ff.down.bias

    h = x + attention(block.norm1(x))
    want = h + swiglu(block.norm2(h))
    torch.testing.assert_close(got[~pad], want[~pad], atol=1e-5, rtol=1e-5)


def test_embedding_and_pooling_by_hand() -> None:
    torch.manual_seed(0)
    cfg = make_cfg("bin", pooling="mean", n_conditions=3)
    net = CellTransformer(cfg)
    batch = make_batch("bin")
    batch["conditions"] = torch.tensor([[0, 2], [1, -1], [-1, -1], [2, 2], [0, 0]])
    cond = net.conditions.table.weight
    want = net.gene_embedding(batch["genes"]) + net.value_embedding(batch["values"])
    extra = torch.stack(
        [cond[0] + cond[2], cond[1], torch.zeros_like(cond[0]), 2 * cond[2], 2 * cond[0]]
    )
    torch.testing.assert_close(net.embed(batch), want + extra[:, None, :])
    out = net(batch)
    keep = ~batch["padding_mask"]
    keep[:, 0] = False
    for i in range(len(LENGTHS)):
        mean = out["token_states"][i][keep[i]].mean(0)
        torch.testing.assert_close(out["cell_embedding"][i], mean)
    # a condition changes the embedding; no conditions key means no condition
    assert not torch.allclose(
        net(dict(batch, conditions=batch["conditions"][:, :1]))["cell_embedding"],
        out["cell_embedding"],
    )
    without = {k: v for k, v in batch.items() if k != "conditions"}
    assert torch.isfinite(net(without)["cell_embedding"]).all()


def test_positional_embedding_for_rank_tokens() -> None:
    torch.manual_seed(0)
    net = CellTransformer(make_cfg("none"))
    batch = make_batch("none", mask_ratio=0.0)
    flipped = dict(batch)
    genes = batch["genes"].clone()
    genes[0, 1:3] = genes[0, [2, 1]]  # swap two genes of cell 0
    flipped["genes"] = genes
    assert not torch.allclose(net(batch)["cell_embedding"][0], net(flipped)["cell_embedding"][0])


@pytest.mark.parametrize("model", ["swiglu-mean", "vae"])
def test_bf16_autocast(model: str) -> None:
    torch.manual_seed(0)
    net = build_model(make_cfg("float", **MODELS[model]))
    batch = make_batch("float")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(batch)
        loss = out["cell_embedding"].float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------- panel


def test_panel_input_by_hand() -> None:
    cfg = make_cfg("bin", kind="mlp", panel_genes=(7, 9, 11))
    net = PanelModel(cfg)
    pad = torch.tensor([[False, False, False, False], [False, False, True, True]])
    batch = {
        "genes": torch.tensor([[1, 9, 7, 30], [1, 11, 0, 0]]),  # 30: not in the panel
        "values": torch.tensor([[0, 4, N_VALUES, 5], [0, 2, 0, 0]]),
        "padding_mask": pad,
        "mask": torch.tensor([[False, False, True, False], [False, False, False, False]]),
    }
    x = net.panel(batch)
    k = float(N_VALUES)
    # columns: values of genes 7, 9, 11, then "masked" flags of genes 7, 9, 11
    want = torch.tensor([[0, 4 / k, 0, 1, 0, 0], [0, 0, 2 / k, 0, 0, 0]])
    torch.testing.assert_close(x, want)
    assert net.n_inputs == 6
    full = PanelModel(make_cfg("none", kind="vae", panel_size=20))
    assert full.n_inputs == 20  # no mask flags for rank tokens


# --------------------------------------------------------------------------- max_len


def test_max_len_counts_genes_and_has_one_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_len`` is genes per cell in the tokenizer, loader, collator and model; ``<cls>`` is
    added by one function; the lower bound is the config schema's, checked by one validator."""
    from scfm import spec as tok
    from scfm.data import Collator, LoaderConfig
    from scfm.tokenize import TokenizerConfig

    cfg = ModelConfig.from_dict({"vocab_size": 20, "value_kind": "none", "max_len": 6})
    assert cfg.n_positions == tok.tokens_per_cell(6) == 7
    collate = Collator(max_len=6, value_kind="none", pad_to="max_len", mask_ratio=0.0)
    batch = collate([np.arange(3, 13)])  # 10 genes: <cls> + the first 6
    assert batch["genes"].shape == (1, 7)
    model = build_model(cfg)  # value kind "none": learned positions, one per token
    assert model.position_embedding.num_embeddings == 7
    assert model(batch)["position_states"].shape[:2] == (1, 7)

    build = {
        "tokenizer": lambda n: TokenizerConfig(kind="binned", max_len=n),
        "loader": lambda n: LoaderConfig(max_len=n),
        "collator": lambda n: Collator(max_len=n, value_kind="float"),
        "model": lambda n: ModelConfig(vocab_size=20, value_kind="float", max_len=n),
    }
    schema_min = tok._min_max_len()
    for make in build.values():
        make(schema_min)
        with pytest.raises((ValueError, ScfmConfigError), match=f"max_len.*>= {schema_min}"):
            make(schema_min - 1)
    monkeypatch.setattr(tok, "_min_max_len", lambda: 5)  # the schema's bound, moved
    for make in build.values():
        with pytest.raises((ValueError, ScfmConfigError), match=r"max_len.*>= 5"):
            make(4)
