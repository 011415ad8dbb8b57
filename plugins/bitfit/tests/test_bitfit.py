"""Tests of the BitFit plugin: contract, hand-computed numerics, groups, merge, routing, files, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import peftlab
from peftlab.models import tiny_model
from peftlab.testing import check_method, logits, random_ids, train_briefly
from peftlab_bitfit import BitFitConfig, bias_layers


def _ids() -> torch.Tensor:
    return random_ids(batch=3, length=12, seed=1)


def _randomize(model, name: str = "default", seed: int = 0) -> dict[str, torch.Tensor]:
    """Give every Δb a random value; returns ``{layer path: Δb}``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for path, layer in bias_layers(model, name).items():
            delta = layer.bitfit_bias[name]
            delta.copy_(torch.randn(delta.shape, generator=g) * 0.3)
            out[path] = delta.detach().clone()
    return out


def _reference(base, deltas: dict[str, torch.Tensor]):
    """The BitFit model written by hand: a copy of the base whose biases are b + Δb (a new bias where none)."""
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for path, delta in deltas.items():
            layer = ref.get_submodule(path)
            if layer.bias is None:
                layer.bias = nn.Parameter(delta.clone())
            else:
                layer.bias.add_(delta)
    return ref


# --- the conformance kit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "task", "config", "kw"),
    [
        # the tiny llama's final RMSNorm bounds the hidden state and its tied head's weights are ~0.02, so biases alone
        # can lower the kit's random-token loss only ~5% (5.55 → 5.24); the SmolLM2 test below checks real learning
        ("llama", "CAUSAL_LM", {}, {"loss_drop": 0.96}),
        ("llama", "SEQ_CLS", {"biases": "ffn"}, {}),
        ("gpt2", "CAUSAL_LM", {}, {"lr": 0.1}),
        ("bert", "SEQ_CLS", {"biases": "attention"}, {}),
    ],
)
def test_check_method(tmp_path, arch, task, config, kw):
    report = check_method("bitfit", config, arch=arch, task=task, tmp_path=tmp_path, **kw)
    assert report["merge_max_diff"] <= 1e-5


def test_registered_capabilities():
    handle = peftlab.get_method("bitfit")
    assert handle.peft_type == "BITFIT"
    assert handle.capabilities.mergeable and handle.capabilities.stackable and handle.capabilities.mixed_batch


# --- which biases train ---------------------------------------------------------------------------------


def _relative(paths):
    """Paths inside transformer layer 0, relative to it."""
    return sorted(p.split(".0.", 1)[1] for p in paths if ".0." in p)


@pytest.mark.parametrize(
    ("arch", "biases", "expected"),
    [
        ("llama", "attention", ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]),
        ("llama", "ffn", ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]),
        ("gpt2", "attention", ["attn.c_attn", "attn.c_proj"]),
        ("gpt2", "ffn", ["mlp.c_fc", "mlp.c_proj"]),
        ("gpt2", "all", ["attn.c_attn", "attn.c_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"]),
        (
            "bert",
            "attention",
            [
                "attention.output.LayerNorm",
                "attention.output.dense",
                "attention.self.key",
                "attention.self.query",
                "attention.self.value",
            ],
        ),
        ("bert", "ffn", ["intermediate.dense", "output.LayerNorm", "output.dense"]),
    ],
)
def test_bias_groups(arch, biases, expected):
    model = tiny_model(arch)
    peftlab.add_adapter(model, "bitfit", {"biases": biases})
    layers = bias_layers(model)
    assert _relative(layers) == expected
    if biases != "all":  # only inside the transformer layers ("all" adds e.g. GPT-2's final ln_f)
        assert all(".1." in p or ".0." in p for p in layers)


def test_all_covers_every_bias_but_the_output_head():
    model = tiny_model("gpt2")
    peftlab.add_adapter(model, "bitfit", {})
    layers = set(bias_layers(model))
    assert "transformer.ln_f" in layers and "lm_head" not in layers
    existing = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if n.endswith(".bias") and "bitfit" not in n}
    assert layers == existing
    llama = tiny_model("llama")  # no biases at all: every linear layer but the head gets a zero one
    peftlab.add_adapter(llama, "bitfit", {})
    assert len(bias_layers(llama)) == 2 * 7 and "lm_head" not in bias_layers(llama)
    assert all(torch.count_nonzero(p) == 0 for p in peftlab.adapter_parameters(llama).values())


def test_target_modules_narrow_the_group():
    model = tiny_model("llama")
    peftlab.add_adapter(model, "bitfit", {"target_modules": ["q_proj", "down_proj"]})
    assert sorted(bias_layers(model)) == [
        f"model.layers.{i}.{m}" for i in (0, 1) for m in ("mlp.down_proj", "self_attn.q_proj")
    ]
    regex = tiny_model("llama")
    peftlab.add_adapter(regex, "bitfit", {"biases": "attention", "target_modules": r".*\.1\.self_attn\.[qv]_proj"})
    assert sorted(bias_layers(regex)) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


# --- numerics against a hand-written reference ----------------------------------------------------------


@pytest.mark.parametrize(("arch", "task"), [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("bert", "SEQ_CLS")])
def test_matches_hand_computed_reference(arch, task):
    base = tiny_model(arch, task=task)
    model = tiny_model(arch, task=task)
    peftlab.add_adapter(model, "bitfit", {})
    deltas = _randomize(model)
    ids = _ids()
    ours = logits(model, ids)
    assert not torch.allclose(ours, logits(base, ids), atol=1e-3)
    assert (ours - logits(_reference(base, deltas), ids)).abs().max().item() <= 1e-5


def test_merge_creates_and_unmerge_removes_biases():
    model = tiny_model("llama")
    peftlab.add_adapter(model, "bitfit", {"biases": "attention"})
    deltas = _randomize(model)
    ids = _ids()
    adapted = logits(model, ids)
    q = model.model.layers[0].self_attn.q_proj
    assert q.bias is None
    peftlab.merge_adapter(model)
    assert torch.equal(q.bias, deltas["model.layers.0.self_attn.q_proj"])  # made permanent
    assert torch.allclose(logits(model, ids), adapted, atol=1e-5)
    with peftlab.active_adapters(model, None):  # merged: in the weights, whatever is active
        assert torch.allclose(logits(model, ids), adapted, atol=1e-5)
    peftlab.unmerge_adapter(model)
    assert q.bias is None and "bias" not in dict(q.named_parameters())
    assert torch.allclose(logits(model, ids), adapted, atol=1e-5)


def test_merge_into_existing_biases_and_back():
    model = tiny_model("gpt2")
    b0 = model.transformer.h[0].attn.c_attn.bias.detach().clone()
    peftlab.add_adapter(model, "bitfit", {})
    deltas = _randomize(model)
    peftlab.merge_adapter(model)
    assert torch.allclose(model.transformer.h[0].attn.c_attn.bias, b0 + deltas["transformer.h.0.attn.c_attn"])
    peftlab.unmerge_adapter(model)
    assert torch.allclose(model.transformer.h[0].attn.c_attn.bias, b0, atol=1e-6)


# --- routing ----------------------------------------------------------------------------------------------


def test_routing_off_stacked_and_mixed_rows():
    base = tiny_model("gpt2")
    model = tiny_model("gpt2")
    peftlab.add_adapter(model, "bitfit", {"biases": "attention"}, "a")
    peftlab.add_adapter(model, "bitfit", {"biases": "ffn"}, "b")
    _randomize(model, "a", seed=1)
    _randomize(model, "b", seed=2)
    ids = _ids()
    with peftlab.active_adapters(model, None):
        assert torch.allclose(logits(model, ids), logits(base, ids), atol=1e-6)
    with peftlab.active_adapters(model, "a"):
        only_a = logits(model, ids)
    with peftlab.active_adapters(model, "b"):
        only_b = logits(model, ids)
    with peftlab.mixed_batch(model, ["b", "a", None]):
        mixed = logits(model, ids)
    assert torch.allclose(mixed[0], only_b[0], atol=1e-5)
    assert torch.allclose(mixed[1], only_a[1], atol=1e-5)
    assert torch.allclose(mixed[2], logits(base, ids)[2], atol=1e-5)
    with peftlab.active_adapters(model, ["a", "b"]):  # stacked: both deltas on their own layers
        both = logits(model, ids)
    assert not torch.allclose(both, only_a, atol=1e-3) and not torch.allclose(both, only_b, atol=1e-3)


# --- files ----------------------------------------------------------------------------------------------


def test_saved_files_hold_the_fine_tuned_biases(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model("gpt2")
    peftlab.add_adapter(model, "bitfit", {"biases": "ffn"})
    _randomize(model)
    ids = _ids()
    adapted = logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "bf")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(
        f"base_model.model.transformer.h.{i}.mlp.{m}.bias" for i in (0, 1) for m in ("c_fc", "c_proj")
    )
    # b + Δb under the layer's own bias name: loading them straight into the base model gives the adapted model
    plain = tiny_model("gpt2")
    missing, unexpected = plain.load_state_dict(
        {k.removeprefix("base_model.model."): v for k, v in tensors.items()}, strict=False
    )
    assert not unexpected
    assert torch.allclose(logits(plain, ids), adapted, atol=1e-5)

    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "BITFIT" and {f.name for f in BitFitConfig.fields()} <= set(cfg)
    assert cfg["biases"] == "ffn" and cfg["add_missing_biases"] is True
    card = (folder / "README.md").read_text()
    assert "peftlab-bitfit" in card and "BITFIT" in card

    fresh = tiny_model("gpt2")
    peftlab.load_adapter(fresh, folder)
    assert torch.allclose(logits(fresh, ids), adapted, atol=1e-6)
    assert peftlab.read_adapter(folder).config == BitFitConfig(biases="ffn")


def test_save_and_reload_while_merged(tmp_path):
    model = tiny_model("llama")
    peftlab.add_adapter(model, "bitfit", {"target_modules": ["o_proj"]})
    _randomize(model)
    ids = _ids()
    adapted = logits(model, ids)
    peftlab.merge_adapter(model)
    folder = peftlab.save_adapter(model, tmp_path / "bf")  # saves b + Δb, not the merged bias + Δb again
    fresh = tiny_model("llama")
    peftlab.load_adapter(fresh, folder)
    assert torch.allclose(logits(fresh, ids), adapted, atol=1e-5)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"biases": "layernorm"}, "biases must be one of all, attention, ffn"),
        ({"target_modules": "q_proj("}, "not a valid regex"),
        ({"target_modules": [""]}, "target_modules must be module names"),
        ({"add_missing_biases": "yes"}, "add_missing_biases must be true or false"),
        ({"bias": "all"}, "does not support bias"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(peftlab.ConfigError, match=message):
        peftlab.make_config("bitfit", config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"target_modules": ["input_layernorm"]}, r"LlamaRMSNorm\): it has no bias term and cannot get one"),
        ({"target_modules": ["self_attn"]}, r"LlamaAttention\): it has no bias term and cannot get one"),
        ({"target_modules": ["c_attn"]}, r"matched no module of the biases='all' group; .*'q_proj'"),
        ({"biases": "ffn", "target_modules": ["q_proj"]}, "matched no module of the biases='ffn' group"),
        ({"add_missing_biases": False}, "found no bias term in LlamaForCausalLM; set add_missing_biases=true"),
        ({"add_missing_biases": False, "target_modules": ["q_proj"]}, "q_proj has no bias; set add_missing_biases"),
    ],
)
def test_model_errors(config, message):
    model = tiny_model("llama")
    with pytest.raises(peftlab.MethodError, match=message):
        peftlab.add_adapter(model, "bitfit", config)
    assert not bias_layers(model), "a failed injection must not leave deltas behind"


def test_existing_biases_only_without_add_missing():
    model = tiny_model("gpt2")
    peftlab.add_adapter(model, "bitfit", {"add_missing_biases": False})
    assert len(bias_layers(model)) == 2 * 6 + 1  # every existing bias still trains


def test_adapter_from_another_base_model_is_refused(tmp_path):
    model = tiny_model("llama")
    peftlab.add_adapter(model, "bitfit", {})
    folder = peftlab.save_adapter(model, tmp_path / "bf")
    with pytest.raises(peftlab.AdapterMismatchError, match="another base model"):
        peftlab.load_adapter(tiny_model("gpt2"), folder)
    weights = peftlab.read_adapter(folder).weights
    other = tiny_model("llama", vocab_size=256)
    other.model.layers[0].self_attn.q_proj = nn.Linear(64, 32, bias=False)  # a differently shaped layer
    peftlab.add_adapter(other, "bitfit", {})
    cfg = peftlab.adapter_state(other).adapters["default"].config
    with pytest.raises(peftlab.AdapterMismatchError, match=r"q_proj.bias has shape \(64,\) but the model expects"):
        peftlab.get_method("bitfit").hook("load")(model=other, config=cfg, adapter_name="default", weights=weights)


# --- the real model -------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_trains_on_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2
    result = train_briefly(model, tokenizer, "bitfit", tmp_path / "out")
    assert result.eval_loss_after < 0.6 * result.eval_loss_before
    assert (result.output_dir / "adapter_config.json").exists()
