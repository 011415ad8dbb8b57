"""Prefix tuning: the contract, the KV-cache mechanics (generate, padding, mixed batches), peft interop, errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import DistilBertConfig, DistilBertForSequenceClassification

import peftlab
from peftlab.kit import KVGeometry
from peftlab.testing import (
    base_eval_loss,
    check_method,
    check_peft_roundtrip,
    left_pad,
    left_padded,
    logits,
    random_ids,
    randomize_adapter,
    sharp_tiny_model,
    skip_if_peft_fails,
    tiny_gqa_model,
    train_briefly,
)

METHOD = "prefix_tuning"
GEN = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

pytestmark = pytest.mark.usefixtures("one_thread")


def adapted(cfg: dict | None = None, model=None, name: str = "default"):
    model = sharp_tiny_model() if model is None else model
    peftlab.add_adapter(model, METHOD, cfg or {"num_virtual_tokens": 5}, name)
    randomize_adapter(model, name, std=0.5, seed=1)
    return model


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("llama", "SEQ_CLS"), ("bert", "SEQ_CLS")]
)
def test_check_method(arch, task, tmp_path):
    report = check_method(METHOD, {"num_virtual_tokens": 10}, arch=arch, task=task, tmp_path=tmp_path)
    assert report["reload_max_diff"] <= 1e-4


def test_capabilities_and_registration():
    handle = peftlab.get_method(METHOD)
    caps = handle.capabilities
    assert (caps.mergeable, caps.kv_cache, caps.mixed_batch, caps.stackable) == (False, True, True, True)
    assert "KV cache" in caps.merge_note
    assert handle.peft_type == "PREFIX_TUNING" and handle.train_defaults["learning_rate"] == 3e-3
    model = adapted()
    with pytest.raises(peftlab.MethodError, match="KV cache"):
        peftlab.merge_adapter(model)
    assert handle.hook("soft_prompt")(model=model, config=None, adapter_name="default") is None


def test_trainable_params_are_the_mlp_and_embedding():
    model = sharp_tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4, "encoder_hidden_size": 16})
    params = peftlab.adapter_parameters(model)
    shapes = {k.split(".", 2)[2]: tuple(p.shape) for k, p in params.items()}
    # tiny llama: 2 layers, 2 kv heads × head_dim 16 → token_dim 32; P = MLP(P') has width 2·2·32
    assert shapes == {
        "embedding.weight": (4, 32),
        "transform.0.weight": (16, 32),
        "transform.0.bias": (16,),
        "transform.2.weight": (128, 16),
        "transform.2.bias": (128,),
    }


# --- the KV cache mechanics ---------------------------------------------------------------------


def greedy_without_cache(model, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by hand: the whole sequence each step, no cache passed (the prefix must still act)."""
    for _ in range(steps):
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
        assert out.past_key_values is None  # as the bare model: no cache handed back for use_cache=False
        x = torch.cat([x, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize("make", [sharp_tiny_model, tiny_gqa_model], ids=["llama-4q2kv", "smol-9q3kv"])
def test_generate_with_cache_equals_decoding_without(make):
    model = adapted(model=make())
    x = random_ids(2, 6)
    with torch.no_grad():
        cached = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10, **GEN)
        uncached = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10, use_cache=False, **GEN
        )
        with peftlab.active_adapters(model, None):
            base = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10, **GEN)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_without_cache(model, x, 10))
    assert not torch.equal(cached, base), "the prefix should change what the model generates"


def test_left_padded_batch_generates_like_one_at_a_time():
    model = adapted()
    prompts = [random_ids(1, n, seed=n)[0] for n in (3, 7, 5)]
    x, mask = left_pad(prompts)
    width = x.shape[1]
    with torch.no_grad():
        batched = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=8, **GEN)[:, width:]
        for i, p in enumerate(prompts):
            alone = model.generate(
                input_ids=p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=8, **GEN
            )[0, len(p) :]
            assert torch.equal(batched[i], alone), f"row {i}: {batched[i].tolist()} vs {alone.tolist()}"


def test_loss_with_labels_covers_only_the_real_tokens():
    model = adapted()
    x = random_ids(2, 9)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
    assert out.logits.shape[:2] == x.shape  # the prefix lives in the cache: no extra positions in the logits
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in peftlab.adapter_parameters(model).values())


def test_mixed_batch_rows_get_their_own_prefix():
    model = adapted({"num_virtual_tokens": 3}, name="a")
    adapted({"num_virtual_tokens": 6}, model=model, name="b")
    randomize_adapter(model, "b", std=0.5, seed=2)
    x = random_ids(3, 7)
    with peftlab.active_adapters(model, "a"):
        only_a = logits(model, x)
    with peftlab.active_adapters(model, "b"):
        only_b = logits(model, x)
    with peftlab.active_adapters(model, None):
        base = logits(model, x)
    with peftlab.mixed_batch(model, ["a", "b", None]):
        mixed = logits(model, x)
        with torch.no_grad():
            mixed_no_mask = model(input_ids=x).logits  # no mask given: the prefix slots still get masked per row
    for got in (mixed, mixed_no_mask):
        assert (got[0] - only_a[0]).abs().max() <= 1e-4
        assert (got[1] - only_b[1]).abs().max() <= 1e-4
        assert (got[2] - base[2]).abs().max() <= 1e-4
    assert (only_a[0] - base[0]).abs().max() > 1e-2 and (only_b[1] - only_a[1]).abs().max() > 1e-2


def test_mixed_batch_generate_matches_each_adapter_alone():
    model = adapted({"num_virtual_tokens": 2}, name="a")
    adapted({"num_virtual_tokens": 5}, model=model, name="b")
    randomize_adapter(model, "b", std=0.5, seed=2)
    x = random_ids(3, 5)
    kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=8, **GEN)
    with torch.no_grad():
        with peftlab.mixed_batch(model, ["b", None, "a"]):
            mixed = model.generate(input_ids=x, **kw)
        for row, name in enumerate(["b", None, "a"]):
            with peftlab.active_adapters(model, name):
                alone = model.generate(input_ids=x, **kw)
            assert torch.equal(mixed[row], alone[row]), f"row {row} ({name})"


def test_two_active_prefixes_stack_side_by_side():
    model = adapted({"num_virtual_tokens": 3}, name="a")
    adapted({"num_virtual_tokens": 4}, model=model, name="b")
    x = random_ids(2, 6)
    with peftlab.active_adapters(model, ["a", "b"]):
        both = logits(model, x)
        with torch.no_grad():
            cached = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, **GEN)
            uncached = model.generate(
                input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, use_cache=False, **GEN
            )
    with peftlab.active_adapters(model, "a"):
        only_a = logits(model, x)
    assert (both - only_a).abs().max() > 1e-2
    assert torch.equal(cached, uncached)


def test_decoding_by_hand_with_the_returned_cache():
    """A caller may continue the returned cache with a mask over its real tokens only (the prefix is added)."""
    model = adapted()
    x = random_ids(2, 6)
    with torch.no_grad():
        full = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        first = model(input_ids=x[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long), use_cache=True)
        rest = model(input_ids=x[:, 4:], attention_mask=torch.ones_like(x), past_key_values=first.past_key_values)
    assert (rest.logits - full[:, 4:]).abs().max() <= 1e-4


def test_position_ids_start_after_the_prefix_like_peft():
    model = adapted()
    x = random_ids(1, 6)
    k = 5
    implicit = logits(model, x)
    explicit = logits(model, x, position_ids=torch.arange(6)[None])  # the caller counts real tokens only
    assert (implicit - explicit).abs().max() <= 1e-5
    shifted = logits(model, x, position_ids=torch.arange(k, k + 6)[None])
    assert (implicit - shifted).abs().max() > 1e-3


# --- interop with peft --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [sharp_tiny_model, lambda: sharp_tiny_model("gpt2"), tiny_gqa_model], ids=["llama", "gpt2", "smol-gqa"]
)
def test_round_trips_with_peft_both_ways(make, tmp_path):
    skip_if_peft_fails(METHOD)
    from peft import PrefixTuningConfig

    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 5, "encoder_hidden_size": 24},
        make_model=make,
        inputs=left_padded(),
        std=0.5,
        peft_config=PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=6, prefix_projection=True, encoder_hidden_size=20
        ),
        tmp_path=tmp_path,
    )
    cfg = json.loads((report["peftlab_saved"] / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["prefix_projection"] is True
    assert report["to_peft_max_diff"] <= 1e-4 and report["from_peft_max_diff"] <= 1e-4  # and greedy replies agree
    assert report["loaded_adapter"] == "default"
    assert report["loaded_as"] == METHOD  # peft's file claimed via prefix_projection
    assert report["from_peft_effect"] > 1e-2  # the prefix really acts
    # peft keeps only P: the adapter is collapsed, and P itself trains from here
    model = report["loaded"]
    ((name, param),) = peftlab.adapter_parameters(model).items()
    assert name.endswith("prompt_embeddings") and param.shape == (6, KVGeometry.of(model).prefix_width)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_classifier_round_trips_with_peft_both_ways(arch, tmp_path):
    skip_if_peft_fails(METHOD, "SEQ_CLS")
    from peft import PrefixTuningConfig

    # the prefix encoder and the (new) classification head get random weights on each side
    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 5},
        make_model=lambda: sharp_tiny_model(arch, "SEQ_CLS"),
        inputs=(random_ids(3, 6), torch.ones(3, 6, dtype=torch.long)),
        std=0.5,
        peft_config=PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4, prefix_projection=True),
        tmp_path=tmp_path,
    )
    # peft files the head under its prompt-learning key base_model.<head>.*
    assert report["to_peft_max_diff"] <= 1e-4 and report["from_peft_max_diff"] <= 1e-4


def test_extra_state_restores_the_mlp(tmp_path):
    model = adapted({"num_virtual_tokens": 4})
    folder = peftlab.save_adapter(model, tmp_path / "a")
    assert (folder / "peftlab_extra.safetensors").exists()
    fresh = sharp_tiny_model()
    peftlab.load_adapter(fresh, folder)
    before = {k.split(".", 2)[2]: p for k, p in peftlab.adapter_parameters(model).items()}
    after = {k.split(".", 2)[2]: p for k, p in peftlab.adapter_parameters(fresh).items()}
    assert before.keys() == after.keys() and "transform.2.weight" in after
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stale_mlp_loses_to_the_peft_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    model = adapted({"num_virtual_tokens": 4})
    folder = peftlab.save_adapter(model, tmp_path / "a")
    extra = load_file(str(folder / "peftlab_extra.safetensors"))
    extra["transform.2.bias"] += 1.0
    save_file(extra, str(folder / "peftlab_extra.safetensors"))
    fresh = sharp_tiny_model()
    with pytest.warns(UserWarning, match="does not reproduce"):
        peftlab.load_adapter(fresh, folder)
    assert (logits(fresh, random_ids()) - logits(model, random_ids())).abs().max() <= 1e-5


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"num_virtual_tokens": True}, "num_virtual_tokens"),
        ({"token_dim": 30, "num_attention_heads": 4}, "multiple"),
        ({"num_layers": -1}, "num_layers"),
        ({"encoder_hidden_size": 0}, "encoder_hidden_size"),
        ({"init_weights": "gaussian"}, "init_weights"),
        ({"prefix_projection": False}, "p_tuning_v2"),
        ({"num_virtual_tokens": 4, "prefix_dropout": 0.1}, "prefix_dropout"),
    ],
)
def test_config_validation(cfg, match):
    with pytest.raises(peftlab.ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def test_peft_config_keys_round_trip():
    handle = peftlab.get_method(METHOD)
    data = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 7,
        "token_dim": 32,
        "num_attention_heads": 2,
        "num_layers": 2,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": 16,
        "prefix_projection": True,
        "init_weights": None,
        "inference_mode": True,
        "modules_to_save": None,
    }
    cfg = handle.config_class.from_dict(data)
    assert cfg.to_dict() == {
        "num_virtual_tokens": 7,
        "token_dim": 32,
        "num_attention_heads": 2,
        "num_layers": 2,
        "init_weights": None,
        "encoder_hidden_size": 16,
        "prefix_projection": True,
    }
    assert handle.obj.claims_peft_config(data) and not handle.obj.claims_peft_config({"prefix_projection": False})


def test_zero_init_gives_a_zero_prefix():
    model = sharp_tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4, "init_weights": "zero"})
    weights = peftlab.get_method(METHOD).hook("save")(model=model, config=None, adapter_name="default")
    assert torch.count_nonzero(weights.tensors["prompt_embeddings"]) == 0
    assert torch.count_nonzero(weights.extra["embedding.weight"]) > 0  # only the MLP's last layer starts at zero


def test_model_without_a_kv_cache_is_refused():
    cfg = DistilBertConfig(vocab_size=256, dim=32, hidden_dim=64, n_layers=1, n_heads=2, num_labels=2)
    model = DistilBertForSequenceClassification(cfg).eval()
    with pytest.raises(peftlab.MethodError, match="takes no KV cache"):
        peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4})
    assert not peftlab.adapter_state(model).adapters  # nothing half-added


def test_adapter_for_another_model_is_refused(tmp_path):
    model = adapted({"num_virtual_tokens": 4})
    folder = peftlab.save_adapter(model, tmp_path / "a")
    other = tiny_gqa_model(layers=3)
    with pytest.raises(peftlab.AdapterMismatchError, match="num_hidden_layers: adapter 2 vs model 3"):
        peftlab.load_adapter(other, folder)  # core's fingerprint check (a peftlab-saved adapter)
    (folder / "peftlab.json").unlink()  # now it looks peft-made: the plugin's own check speaks
    with pytest.raises(
        peftlab.AdapterMismatchError,
        match=r"num_layers: adapter 2 vs model 3; num_attention_heads: adapter 2 vs model 3; "
        r"token_dim: adapter 32 vs model 24",
    ):
        peftlab.load_adapter(other, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for key in ("num_layers", "num_attention_heads", "token_dim"):
        cfg.pop(key)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(peftlab.AdapterMismatchError, match=r"shape \(4, 128\) but this model needs \(4, 144\)"):
        peftlab.load_adapter(other, folder)  # no numbers in the config: the tensor shape gives it away


def test_prefix_plus_input_longer_than_the_context_is_refused():
    model = adapted({"num_virtual_tokens": 10})  # tiny llama: 256 positions
    x = random_ids(1, 250)
    with pytest.raises(peftlab.MethodError, match=r"prefix \(10 virtual tokens\) \+ input \(250 tokens\) = 260"):
        logits(model, x)
    with peftlab.active_adapters(model, None):
        assert logits(model, x).shape[1] == 250  # the base model alone still fits


def test_mixed_batch_of_the_wrong_size_is_refused():
    model = adapted(name="a")
    with peftlab.mixed_batch(model, ["a", None]):
        with pytest.raises(peftlab.MethodError, match="2 rows but the batch has 3"):
            logits(model, random_ids(3, 5))


def test_gradient_checkpointing_is_refused_rather_than_silently_dropping_the_prefix():
    model = adapted()
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(peftlab.MethodError, match="gradient checkpointing drops the KV cache"):
        model(input_ids=random_ids(), labels=random_ids())


def test_bad_adapter_names_are_refused():
    with pytest.raises(peftlab.MethodError, match="cannot contain"):
        peftlab.add_adapter(sharp_tiny_model(), METHOD, {"num_virtual_tokens": 2}, "my.adapter")


# --- the real model -----------------------------------------------------------------------------


@pytest.mark.smollm2
def test_smollm2_trains_and_generates(smollm2, tmp_path):
    model, tokenizer = smollm2
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_briefly(model, tokenizer, METHOD, tmp_path / "out", {"num_virtual_tokens": 10})
    base = base_eval_loss(model, tokenizer)
    print(f"base model eval loss {base:.3f}")
    assert result.eval_loss_after < 0.5 * result.eval_loss_before
    assert result.eval_loss_after < 0.5 * base  # better than the base model, not just than a random prefix
    # SmolLM2 has 9 query heads and 3 key/value heads: prefixes are shaped by the latter
    P = peftlab.get_method(METHOD).hook("save")(model=model, config=None, adapter_name="default").tensors
    assert P["prompt_embeddings"].shape == (10, 30 * 2 * 3 * 64)
    x = tokenizer(["The capital of France is", "Hi"], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        cached = model.generate(**x, **kw)
        uncached = model.generate(**x, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
