"""P-Tuning v2: the contract, peft interop, the shared KV-prefix mechanics with another method, errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import peftlab
from peftlab.kit import KVGeometry
from peftlab.testing import (
    base_eval_loss,
    check_method,
    check_peft_roundtrip,
    left_padded,
    logits,
    random_ids,
    sharp_tiny_model,
    skip_if_peft_fails,
    tiny_gqa_model,
    train_briefly,
)

METHOD = "p_tuning_v2"
GEN = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

pytestmark = pytest.mark.usefixtures("one_thread")


def scale_prompts(model, name: str = "default", factor: float = 0.5) -> None:
    with torch.no_grad():
        for p in peftlab.adapter_parameters(model, name).values():
            p.mul_(factor)  # N(0, 1) keys are already strong; keep the outputs in a sane range


@pytest.mark.parametrize(
    "arch,task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("llama", "SEQ_CLS"), ("bert", "SEQ_CLS")]
)
def test_check_method(arch, task, tmp_path):
    # the prompts are the parameters, at the unit scale of their N(0, 1) init: 30 steps need a large step size
    report = check_method(METHOD, {"num_virtual_tokens": 10}, arch=arch, task=task, lr=0.3, tmp_path=tmp_path)
    assert report["reload_max_diff"] <= 1e-4


def test_capabilities_and_trainable_params():
    handle = peftlab.get_method(METHOD)
    caps = handle.capabilities
    assert (caps.mergeable, caps.kv_cache, caps.mixed_batch, caps.stackable) == (False, True, True, True)
    assert handle.peft_type == "PREFIX_TUNING"
    model = sharp_tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4})
    params = peftlab.adapter_parameters(model)
    # no reparameterisation: the per-layer keys/values [k, layers·2·kv_heads·head_dim] are the parameter
    assert {k: tuple(p.shape) for k, p in params.items()} == {"peftlab_prefix.default.prompts": (4, 2 * 2 * 2 * 16)}
    with pytest.raises(peftlab.MethodError, match="KV cache"):
        peftlab.merge_adapter(model)


@pytest.mark.parametrize("make", [sharp_tiny_model, tiny_gqa_model], ids=["llama-4q2kv", "smol-9q3kv"])
def test_generate_with_cache_equals_without(make):
    model = make()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 5})
    scale_prompts(model)
    x = random_ids(2, 6)
    kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=10, **GEN)
    with torch.no_grad():
        cached = model.generate(input_ids=x, **kw)
        uncached = model.generate(input_ids=x, use_cache=False, **kw)
        with peftlab.active_adapters(model, None):
            base = model.generate(input_ids=x, **kw)
    assert torch.equal(cached, uncached) and not torch.equal(cached, base)


def test_mixed_batch_across_prefix_methods():
    """A P-Tuning v2 adapter and a prefix-tuning adapter share one cache: each row sees only its own prefix."""
    model = sharp_tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 3}, "v2")
    peftlab.add_adapter(model, "prefix_tuning", {"num_virtual_tokens": 6}, "pt")
    scale_prompts(model, "v2")
    x = random_ids(3, 7)
    expected = []
    for row, name in enumerate(["pt", None, "v2"]):
        with peftlab.active_adapters(model, name):
            expected.append(logits(model, x)[row])
    with peftlab.mixed_batch(model, ["pt", None, "v2"]):
        mixed = logits(model, x)
    for row in range(3):
        assert (mixed[row] - expected[row]).abs().max() <= 1e-4, f"row {row}"
    assert (expected[2] - expected[1]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "make,kv_heads,token_dim",
    [
        (sharp_tiny_model, 2, 32),
        (lambda: sharp_tiny_model("gpt2"), 4, 64),
        (tiny_gqa_model, 3, 24),
    ],
    ids=["llama", "gpt2", "smol-gqa"],
)
def test_round_trips_with_peft_both_ways(make, kv_heads, token_dim, tmp_path):
    skip_if_peft_fails(METHOD)
    from peft import PrefixTuningConfig

    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 5},
        make_model=make,
        inputs=left_padded(),
        std=0.5,
        peft_config=PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, prefix_projection=False),
        tmp_path=tmp_path,
    )
    folder = report["peftlab_saved"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["prefix_projection"] is False and cfg["num_attention_heads"] == kv_heads
    assert cfg["token_dim"] == token_dim
    assert not (folder / "peftlab_extra.safetensors").exists()  # nothing beyond what peft keeps
    assert report["to_peft_max_diff"] <= 1e-4 and report["from_peft_max_diff"] <= 1e-4  # and greedy replies agree
    assert report["loaded_as"] == METHOD  # peft's file claimed: prefix_projection false
    assert report["from_peft_effect"] > 1e-2


def test_classifier_round_trips_with_peft_both_ways(tmp_path):
    skip_if_peft_fails(METHOD, "SEQ_CLS")
    from peft import PrefixTuningConfig

    # the prompts and the (new) classification head get random weights on each side
    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 4},
        make_model=lambda: sharp_tiny_model("llama", "SEQ_CLS"),
        inputs=(random_ids(3, 6), torch.ones(3, 6, dtype=torch.long)),
        std=0.5,
        peft_config=PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
        tmp_path=tmp_path,
    )
    assert report["loaded_as"] == METHOD
    assert report["to_peft_max_diff"] <= 1e-4 and report["from_peft_max_diff"] <= 1e-4


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"num_virtual_tokens": -3}, "num_virtual_tokens"),
        ({"token_dim": 10, "num_attention_heads": 3}, "multiple"),
        ({"init_weights": "normal"}, "init_weights"),
        ({"prefix_projection": True}, "prefix_tuning"),
        ({"encoder_hidden_size": 64}, None),  # written by peft for every PREFIX_TUNING config: accepted, ignored
    ],
)
def test_config_validation(cfg, match):
    if match is None:
        assert peftlab.make_config(METHOD, cfg).to_dict()["prefix_projection"] is False
        return
    with pytest.raises(peftlab.ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def test_zero_init():
    model = sharp_tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4, "init_weights": "zero"})
    (p,) = peftlab.adapter_parameters(model).values()
    assert torch.count_nonzero(p) == 0


def test_adapter_for_another_model_is_refused(tmp_path):
    model = sharp_tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4})
    folder = peftlab.save_adapter(model, tmp_path / "a")
    (folder / "peftlab.json").unlink()  # as if peft made it: no base fingerprint, the plugin checks
    other = tiny_gqa_model(layers=3)
    with pytest.raises(peftlab.AdapterMismatchError, match="num_layers: adapter 2 vs model 3"):
        peftlab.load_adapter(other, folder)
    assert KVGeometry.of(other).describe() == "num_layers=3, key/value heads=3, head_dim=8 (token_dim=24)"


def test_prefix_plus_input_longer_than_the_context_is_refused():
    model = tiny_gqa_model()  # 128 positions
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 8})
    with pytest.raises(peftlab.MethodError, match="exceed the model's context of 128"):
        logits(model, random_ids(1, 125))


@pytest.mark.smollm2
def test_smollm2_trains(smollm2, tmp_path):
    model, tokenizer = smollm2
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_briefly(model, tokenizer, METHOD, tmp_path / "out", {"num_virtual_tokens": 10})
    base = base_eval_loss(model, tokenizer)
    print(f"base model eval loss {base:.3f}")
    assert result.eval_loss_after < 0.5 * result.eval_loss_before
    assert result.eval_loss_after < 0.5 * base  # better than the base model, not just than a random prefix
