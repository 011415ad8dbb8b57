"""Tests of the bottleneck adapter plugin: contract, hand-computed numerics, routing, files, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import peftlab
from peftlab.models import tiny_model
from peftlab.testing import check_method, logits, random_ids, randomize_adapter, train_briefly
from peftlab_adapter import Bottleneck, BottleneckAdapterConfig, bottlenecks


def _ids() -> torch.Tensor:
    return random_ids(batch=3, length=12, seed=1)


# --- the conformance kit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "task", "config"),
    [
        ("llama", "CAUSAL_LM", {"bottleneck_size": 16}),
        ("llama", "SEQ_CLS", {"variant": "pfeiffer", "activation": "gelu"}),
        ("gpt2", "CAUSAL_LM", {"bottleneck_size": 32, "activation": "silu"}),  # 16 falls just short of the kit's 10%
        ("bert", "SEQ_CLS", {"bottleneck_size": 16, "activation": "tanh"}),
    ],
)
def test_check_method(tmp_path, arch, task, config):
    report = check_method("adapter", config, arch=arch, task=task, tmp_path=tmp_path)
    assert report["reload_max_diff"] <= 1e-5
    assert "merge_max_diff" not in report  # declared not mergeable


def test_registered_capabilities():
    handle = peftlab.get_method("adapter")
    assert handle.peft_type == "BOTTLENECK_ADAPTER"
    caps = handle.capabilities
    assert not caps.mergeable and "non-linearity" in caps.merge_note
    assert caps.stackable and caps.mixed_batch


# --- numerics against a hand-written reference ----------------------------------------------------------


class _Reference(nn.Module):
    """The paper's equation written out by hand around an untouched copy of the sublayer."""

    def __init__(self, sublayer: nn.Module, adapter: Bottleneck, f) -> None:
        super().__init__()
        self.sublayer = sublayer
        down, up = adapter.adapter_down, adapter.adapter_up
        self.W_down, self.b_down = down.weight.detach().clone(), down.bias.detach().clone()
        self.W_up, self.b_up = up.weight.detach().clone(), up.bias.detach().clone()
        self.f = f

    def forward(self, *args, **kwargs):
        out = self.sublayer(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        h = h + (self.f(h @ self.W_down.T + self.b_down) @ self.W_up.T + self.b_up)  # h ← h + f(h W_down) W_up
        return (h, *out[1:]) if isinstance(out, tuple) else h


def _reference_model(base, adapted, f):
    """A copy of the base model whose adapted sublayers are swapped for ``_Reference`` wrappers."""
    ref = copy.deepcopy(base)
    for path, adapters in bottlenecks(adapted, "default").items():
        parent, _, child = path.rpartition(".")
        holder = ref.get_submodule(parent)
        setattr(holder, child, _Reference(getattr(holder, child), adapters["default"], f))
    return ref


@pytest.mark.parametrize(
    ("arch", "config", "expected", "f"),
    [
        (
            "llama",
            {"bottleneck_size": 8},
            ["model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn", "model.layers.1.mlp"],
            torch.relu,
        ),
        (
            "llama",
            {"variant": "pfeiffer", "layers": [1], "activation": "silu"},
            ["model.layers.1.mlp"],
            nn.functional.silu,
        ),
        (
            "gpt2",
            {"bottleneck_size": 8, "activation": "tanh"},
            ["transformer.h.0.attn", "transformer.h.0.mlp", "transformer.h.1.attn", "transformer.h.1.mlp"],
            torch.tanh,
        ),
        (
            "bert",
            {"bottleneck_size": 8, "activation": "gelu", "layers": [0]},
            ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"],
            nn.functional.gelu,
        ),
    ],
)
def test_matches_hand_computed_reference(arch, config, expected, f):
    base = tiny_model(arch)
    model = tiny_model(arch)
    peftlab.add_adapter(model, "adapter", config)
    assert sorted(bottlenecks(model)) == sorted(expected)
    randomize_adapter(model, std=0.2)
    ids = _ids()
    ours, ref = logits(model, ids), logits(_reference_model(base, model, f), ids)
    assert not torch.allclose(ours, logits(base, ids), atol=1e-3), "random adapters must change the outputs"
    assert (ours - ref).abs().max().item() <= 1e-5


def test_hook_sees_the_sublayer_output_before_the_residual():
    """Capture the MLP's raw output with a hook registered before injection; apply the formula by hand."""
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    seen = {}
    mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("raw", out.detach().clone()))
    peftlab.add_adapter(model, "adapter", {"variant": "pfeiffer", "bottleneck_size": 4, "layers": [0]})
    mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("adapted", out.detach().clone()))
    randomize_adapter(model, std=0.2)
    logits(model, _ids())
    down, up = mlp.bottleneck["default"].adapter_down, mlp.bottleneck["default"].adapter_up
    h = seen["raw"]
    expected = h + torch.relu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
    assert torch.allclose(seen["adapted"], expected, atol=1e-6)


def test_bottleneck_sizes_and_init():
    model = tiny_model("llama")  # hidden size 64
    peftlab.add_adapter(model, "adapter", {"reduction_factor": 8})
    down = model.model.layers[0].mlp.bottleneck["default"].adapter_down
    assert down.weight.shape == (8, 64)
    up = model.model.layers[0].mlp.bottleneck["default"].adapter_up
    assert torch.count_nonzero(up.weight) == 0 and torch.count_nonzero(up.bias) == 0  # exactly the base model
    assert 0 < down.weight.abs().max() <= 2e-2  # truncated normal, std 1e-2, cut at 2σ
    peftlab.add_adapter(model, "adapter", {"bottleneck_size": 5, "zero_init_up": False, "init_scale": 1e-3}, "b")
    b = model.model.layers[0].mlp.bottleneck["b"]
    assert b.adapter_down.weight.shape == (5, 64) and 0 < b.adapter_up.weight.abs().max() <= 2e-3
    trainable = peftlab.adapter_parameters(model, "b")
    assert sum(p.numel() for p in trainable.values()) == 4 * (2 * 64 * 5 + 5 + 64)  # 2 layers x 2 sublayers


def test_parameters_follow_model_dtype():
    model = tiny_model("llama").to(torch.bfloat16)
    peftlab.add_adapter(model, "adapter", {"bottleneck_size": 4})
    assert {p.dtype for p in peftlab.adapter_parameters(model).values()} == {torch.bfloat16}
    assert logits(model, _ids()).isfinite().all()


# --- routing: inactive, several adapters, mixed batches, deep copies -------------------------------------


def test_routing_off_stacked_and_mixed_rows():
    base = tiny_model("llama")
    model = tiny_model("llama")
    peftlab.add_adapter(model, "adapter", {"bottleneck_size": 8}, "a")
    peftlab.add_adapter(model, "adapter", {"bottleneck_size": 4, "variant": "pfeiffer"}, "b")
    randomize_adapter(model, "a", std=0.2, seed=1)
    randomize_adapter(model, "b", std=0.2, seed=2)
    ids = _ids()
    with peftlab.active_adapters(model, None):
        assert torch.allclose(logits(model, ids), logits(base, ids), atol=1e-6)
    with peftlab.active_adapters(model, "a"):
        only_a = logits(model, ids)
    with peftlab.active_adapters(model, "b"):
        only_b = logits(model, ids)
    assert not torch.allclose(only_a, only_b, atol=1e-3)
    with peftlab.mixed_batch(model, ["a", None, "b"]):
        mixed = logits(model, ids)
    assert torch.allclose(mixed[0], only_a[0], atol=1e-5)
    assert torch.allclose(mixed[1], logits(base, ids)[1], atol=1e-5)
    assert torch.allclose(mixed[2], only_b[2], atol=1e-5)
    with peftlab.mixed_batch(model, ["b", "b", "b"]):
        assert torch.allclose(logits(model, ids), only_b, atol=1e-5)


def test_deepcopy_is_independent():
    model = tiny_model("llama")
    peftlab.add_adapter(model, "adapter", {"bottleneck_size": 4})
    randomize_adapter(model, std=0.2)
    twin = copy.deepcopy(model)
    ids = _ids()
    assert torch.allclose(logits(twin, ids), logits(model, ids))
    with torch.no_grad():
        twin.model.layers[0].mlp.bottleneck["default"].adapter_up.bias.add_(1.0)
    assert not torch.allclose(logits(twin, ids), logits(model, ids), atol=1e-3)
    peftlab.set_active(twin, None)
    assert not torch.allclose(logits(twin, ids), logits(model, ids), atol=1e-3)  # the copy has its own state


def test_merge_is_refused_with_the_reason():
    model = tiny_model("llama")
    peftlab.add_adapter(model, "adapter", {})
    with pytest.raises(peftlab.MethodError, match="non-linearity"):
        peftlab.merge_adapter(model)


# --- files ----------------------------------------------------------------------------------------------


def test_saved_files_keys_config_and_card(tmp_path):
    model = tiny_model("llama")
    config = {"variant": "houlsby", "bottleneck_size": 6, "activation": "gelu", "layers": [1]}
    peftlab.add_adapter(model, "adapter", config)
    randomize_adapter(model, std=0.2)
    folder = peftlab.save_adapter(model, tmp_path / "ad")
    from safetensors.torch import load_file

    keys = sorted(load_file(str(folder / "adapter_model.safetensors")))
    assert keys == sorted(
        f"base_model.model.model.layers.1.{s}.adapter_{p}.{t}"
        for s in ("self_attn", "mlp")
        for p in ("down", "up")
        for t in ("weight", "bias")
    )
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "BOTTLENECK_ADAPTER" and cfg["task_type"] == "CAUSAL_LM"
    fields = {f.name for f in BottleneckAdapterConfig.fields()}
    assert fields <= set(cfg)
    assert {k: cfg[k] for k in config} == config
    card = (folder / "README.md").read_text()
    assert "peftlab-adapter" in card and "BOTTLENECK_ADAPTER" in card and "library_name: peft" in card

    fresh = tiny_model("llama")
    assert peftlab.load_adapter(fresh, folder) == "default"
    ids = _ids()
    assert torch.equal(logits(fresh, ids), logits(model, ids))
    assert peftlab.read_adapter(folder).config == BottleneckAdapterConfig(**config)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"reduction_factor": 0.5}, "reduction_factor must be ≥ 1"),
        ({"bottleneck_size": 0}, "bottleneck_size must be a positive integer"),
        ({"activation": "softmax"}, "activation must be one of relu, gelu, silu, tanh"),
        ({"variant": "parallel"}, "variant must be one of houlsby, pfeiffer"),
        ({"layers": [-1]}, "layers must be non-negative"),
        ({"init_scale": -1.0}, "init_scale must be ≥ 0"),
        ({"ffn_module": ""}, "ffn_module must be a module path"),
        ({"attn_module": "mlp", "ffn_module": "mlp"}, "both name 'mlp'"),
        ({"dropout": 0.1}, "does not support dropout"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(peftlab.ConfigError, match=message):
        peftlab.make_config("adapter", config)


def test_layers_from_text_values():
    assert BottleneckAdapterConfig.from_strings({"layers": "0, 2"}).layers == [0, 2]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"bottleneck_size": 65}, "bottleneck_size=65 is larger than the model's hidden size 64"),
        ({"reduction_factor": 100}, "leaves no bottleneck for hidden size 64"),
        ({"layers": [0, 2]}, r"asks for layer 2, but the model has 2 layers \(indices 0..1\)"),
        ({"ffn_module": "feed_forward"}, "has no module 'feed_forward'; its children are"),
    ],
)
def test_model_errors(config, message):
    model = tiny_model("llama")
    with pytest.raises(peftlab.MethodError, match=message):
        peftlab.add_adapter(model, "adapter", config)
    assert not bottlenecks(model), "a failed injection must not leave adapters behind"
    assert "default" not in peftlab.adapter_state(model).adapters


def test_unknown_architecture_says_what_to_pass():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(peftlab.MethodError, match=r"pass ffn_module.*model.layers.0.*'self_attn', 'mlp'"):
        peftlab.add_adapter(model, "adapter", {})
    peftlab.add_adapter(model, "adapter", {"attn_module": "self_attn", "ffn_module": "mlp"})
    assert len(bottlenecks(model)) == 4


def test_sublayer_with_wrong_output_size_is_named():
    model = tiny_model("llama")
    peftlab.add_adapter(model, "adapter", {"variant": "pfeiffer", "ffn_module": "mlp.up_proj"})  # 128 wide, not 64
    with pytest.raises(peftlab.MethodError, match="has size 128, not the hidden size 64"):
        logits(model, _ids())


def test_adapter_from_another_base_model_is_refused(tmp_path):
    model = tiny_model("llama")
    peftlab.add_adapter(model, "adapter", {"bottleneck_size": 4})
    folder = peftlab.save_adapter(model, tmp_path / "ad")
    with pytest.raises(peftlab.AdapterMismatchError, match="another base model"):
        peftlab.load_adapter(tiny_model("gpt2"), folder)
    # the load hook itself names the tensor whose shape differs
    other = tiny_model("llama")
    peftlab.add_adapter(other, "adapter", {"bottleneck_size": 8})
    weights = peftlab.get_method("adapter").hook("save")(model=model, config=None, adapter_name="default")
    cfg = peftlab.adapter_state(other).adapters["default"].config
    with pytest.raises(peftlab.AdapterMismatchError, match=r"adapter_down.weight has shape \(4, 64\)"):
        peftlab.get_method("adapter").hook("load")(model=other, config=cfg, adapter_name="default", weights=weights)


# --- the real model -------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_trains_on_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2
    result = train_briefly(model, tokenizer, "adapter", tmp_path / "out")
    assert result.eval_loss_after < 0.6 * result.eval_loss_before
    assert (result.output_dir / "adapter_config.json").exists()
