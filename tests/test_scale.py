"""The ``scale`` hook and ``set_weight``: every installed scalable method weights its effect (0 = base, 1 = as
trained, LoRA's 0.5 = exactly half ΔW, gradients reach a tensor weight); the others are refused with their note."""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab.adapters import get_weight, set_weight
from peftlab.errors import ConfigError, MethodError
from peftlab.models import tiny_model
from peftlab.testing import logits, random_ids, randomize_adapter

# a config per installed method that makes it act on the tiny llama (others take the defaults)
CONFIGS = {"adapter": {"bottleneck_size": 16}, "adalora": {"init_lora_weights": False, "total_step": 10}}
SCALABLE = sorted(
    m.name for m in peftlab.methods() if m.capabilities.scalable and "CAUSAL_LM" in m.capabilities.task_types
)
NOT_SCALABLE = sorted(m.name for m in peftlab.methods() if not m.capabilities.scalable)


def _adapted(method: str, name: str = "default"):
    model = tiny_model().eval()
    peftlab.add_adapter(model, method, CONFIGS.get(method), name=name)
    randomize_adapter(model, name, std=0.2, seed=3)
    return model


def test_the_builtin_methods_are_scalable_or_say_why_not():
    """LoRA-family, BitFit and the bottleneck adapter weight their effect; prompt methods say why they cannot."""
    assert {"lora", "adalora", "bitfit", "adapter"} <= set(SCALABLE)
    for name in NOT_SCALABLE:
        note = peftlab.get_method(name).capabilities.scale_note
        assert len(note) > 40, f"method {name} is not scalable and must say why (scale_note)"
    for name in {"prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"} & {m.name for m in peftlab.methods()}:
        assert name in NOT_SCALABLE


@pytest.mark.parametrize("method", SCALABLE)
def test_scale_weight_zero_is_the_base_and_one_is_unchanged(method):
    ids = random_ids(batch=2, length=9, seed=2)
    model = _adapted(method)
    with peftlab.active_adapters(model, None):
        base = logits(model, ids)
    adapted = logits(model, ids)
    assert (adapted - base).abs().max() > 1e-3, "the randomized adapter must act for this test to mean anything"
    set_weight(model, "default", 0.0)
    assert torch.allclose(logits(model, ids), base, atol=1e-6)
    set_weight(model, "default", 1.0)
    assert torch.equal(logits(model, ids), adapted)
    set_weight(model, "default", torch.tensor(0.0))  # a tensor weight acts the same way
    assert torch.allclose(logits(model, ids), base, atol=1e-6)
    set_weight(model, "default", 0.5)
    half = logits(model, ids)
    assert (half - base).abs().max() > 1e-4 and (half - adapted).abs().max() > 1e-4
    assert get_weight(model, "default") == 0.5


@pytest.mark.parametrize("method", SCALABLE)
def test_scale_gradient_reaches_a_tensor_weight(method):
    model = _adapted(method)
    for p in model.parameters():
        p.requires_grad_(False)
    w = torch.tensor(0.7, requires_grad=True)
    set_weight(model, "default", w)
    ids = random_ids(batch=2, length=9, seed=4)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert w.grad is not None and w.grad.abs() > 0
    # the gradient is the loss's derivative along the weight: compare with a finite difference
    eps = 1e-2
    with torch.no_grad():
        set_weight(model, "default", 0.7 + eps)
        up = model(input_ids=ids, labels=ids).loss
        set_weight(model, "default", 0.7 - eps)
        down = model(input_ids=ids, labels=ids).loss
    assert float(w.grad) == pytest.approx(float(up - down) / (2 * eps), rel=0.05, abs=1e-4)


def test_scale_lora_at_half_is_exactly_half_its_delta_w():
    ids = random_ids(batch=2, length=9, seed=5)
    model = _adapted("lora")
    halved = _adapted("lora")
    with torch.no_grad():
        for n, p in halved.named_parameters():
            if ".lora_B." in n:
                p.mul_(0.5)  # B/2: ΔW/2, exactly (a power of two)
    set_weight(model, "default", 0.5)
    assert torch.equal(logits(model, ids), logits(halved, ids))
    # merge folds the weighted ΔW: W + ΔW/2
    layers = {p: m for p, m in model.named_modules() if hasattr(m, "lora_A")}
    before = {p: m.base_layer.weight.detach().clone() for p, m in layers.items()}
    peftlab.merge_adapter(model, "default")
    for p, m in layers.items():
        expected = before[p] + 0.5 * m.delta_weight("default")
        assert torch.allclose(m.base_layer.weight, expected, atol=1e-7)
    assert torch.allclose(logits(model, ids), logits(halved, ids), atol=1e-5)


@pytest.mark.parametrize("method", [m for m in SCALABLE if peftlab.get_method(m).capabilities.mergeable])
def test_scale_survives_merge_and_unmerge(method):
    """A weighted adapter merges as weighted; reweighting a merged one re-merges; unmerge gives the base back."""
    ids = random_ids(batch=2, length=9, seed=6)
    model = _adapted(method)
    with peftlab.active_adapters(model, None):
        base = logits(model, ids)
    set_weight(model, "default", 0.3)
    weighted = logits(model, ids)
    peftlab.merge_adapter(model, "default")
    assert torch.allclose(logits(model, ids), weighted, atol=1e-5)
    set_weight(model, "default", 0.0)  # while merged: unmerge, reweight, merge again
    assert torch.allclose(logits(model, ids), base, atol=1e-5)
    set_weight(model, "default", 0.3)
    peftlab.unmerge_adapter(model, "default")
    assert torch.allclose(logits(model, ids), weighted, atol=1e-5)
    with peftlab.active_adapters(model, None):
        assert torch.allclose(logits(model, ids), base, atol=1e-5)


def test_scale_weights_two_stacked_adapters_independently():
    ids = random_ids(batch=2, length=9, seed=7)
    model = tiny_model().eval()
    peftlab.add_adapter(model, "lora", name="a")
    peftlab.add_adapter(model, "bitfit", name="b")
    randomize_adapter(model, "a", std=0.2, seed=1)
    randomize_adapter(model, "b", std=0.2, seed=2)
    with peftlab.active_adapters(model, "b"):
        only_b = logits(model, ids)
    set_weight(model, "a", 0.0)
    assert torch.allclose(logits(model, ids), only_b, atol=1e-6)


def test_scale_saving_writes_the_adapter_as_trained(tmp_path):
    ids = random_ids(batch=2, length=9, seed=8)
    model = _adapted("bitfit")
    full = logits(model, ids)
    set_weight(model, "default", 0.25)
    peftlab.save_adapter(model, tmp_path / "a")
    fresh = tiny_model().eval()
    peftlab.load_adapter(fresh, tmp_path / "a")
    assert torch.allclose(logits(fresh, ids), full, atol=1e-6)


@pytest.mark.parametrize("method", NOT_SCALABLE)
def test_scale_refused_for_a_method_that_cannot_scale(method):
    handle = peftlab.get_method(method)
    if "CAUSAL_LM" not in handle.capabilities.task_types or handle.capabilities.needs_quantized_base:
        pytest.skip(f"{method} needs a special base")
    model = tiny_model().eval()
    peftlab.add_adapter(model, method, name="p")
    with pytest.raises(MethodError) as err:
        set_weight(model, "p", 0.5)
    assert method in str(err.value) and handle.capabilities.scale_note in str(err.value)
    set_weight(model, "p", 1.0)  # 1 changes nothing: always accepted
    assert get_weight(model, "p") == 1.0
    with pytest.raises(MethodError):
        set_weight(model, "p", torch.tensor(1.0, requires_grad=True))  # a learnable weight cannot reach it


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", True, torch.ones(2), torch.tensor(1)])
def test_scale_bad_weights_are_refused(bad):
    model = _adapted("lora")
    with pytest.raises(ConfigError, match="weight of adapter 'default'"):
        set_weight(model, "default", bad)
    assert get_weight(model, "default") == 1.0


def test_scale_lora_that_trains_biases_is_refused():
    model = tiny_model().eval()
    peftlab.add_adapter(model, "lora", {"bias": "all"})
    with pytest.raises(MethodError, match="trains biases"):
        set_weight(model, "default", 0.5)


def test_scale_unknown_adapter_is_named():
    with pytest.raises(KeyError, match="nope"):
        set_weight(_adapted("lora"), "nope", 0.5)
