"""P-Tuning v2: the contract, peft interop, the shared KV-prefix mechanics with another method, errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import peftlab
from peftlab.models import tiny_model
from peftlab.testing import check_method
from peftlab_prefix_tuning import KVGeometry

METHOD = "p_tuning_v2"
GEN = dict(do_sample=False, pad_token_id=0, eos_token_id=None)


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models run fastest on one thread (and several test runs may share the machine's cores)."""
    if request.node.get_closest_marker("smollm2"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sharp(model):
    """Scale the attention projections so a prefix changes the outputs clearly (random tiny models barely attend)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj", "v_proj", "c_attn")):
                p.mul_(5)
    return model


def tiny(arch: str = "llama", task: str = "CAUSAL_LM"):
    return sharp(tiny_model(arch, task=task))


def tiny_smol(layers: int = 2):
    """SmolLM2's attention layout in miniature: 9 query heads, 3 key/value heads."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=72, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    model = sharp(AutoModelForCausalLM.from_config(cfg))
    model.peftlab_base_id, model.peftlab_new_modules = "tiny-smol", []
    return model.eval()


def ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(batch: int = 3, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths, left-padded (pad id 0) as generate wants them."""
    x = ids(batch, length)
    mask = torch.ones_like(x)
    for row in range(batch):
        mask[row, : row * 2] = 0
        x[row, : row * 2] = 0
    return x, mask


def logits(model, x, mask=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, attention_mask=torch.ones_like(x) if mask is None else mask).logits


def scale_prompts(model, name: str = "default", factor: float = 0.5) -> None:
    with torch.no_grad():
        for p in peftlab.adapter_parameters(model, name).values():
            p.mul_(factor)  # N(0, 1) keys are already strong; keep the outputs in a sane range


@pytest.mark.parametrize("arch,task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("llama", "SEQ_CLS"),
                                       ("bert", "SEQ_CLS")])
def test_check_method(arch, task, tmp_path):
    # the prompts are the parameters, at the unit scale of their N(0, 1) init: 30 steps need a large step size
    report = check_method(METHOD, {"num_virtual_tokens": 10}, arch=arch, task=task, lr=0.3, tmp_path=tmp_path)
    assert report["reload_max_diff"] <= 1e-4


def test_capabilities_and_trainable_params():
    handle = peftlab.get_method(METHOD)
    caps = handle.capabilities
    assert (caps.mergeable, caps.kv_cache, caps.mixed_batch, caps.stackable) == (False, True, True, True)
    assert handle.peft_type == "PREFIX_TUNING"
    model = tiny()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4})
    params = peftlab.adapter_parameters(model)
    # no reparameterisation: the per-layer keys/values [k, layers·2·kv_heads·head_dim] are the parameter
    assert {k: tuple(p.shape) for k, p in params.items()} == {"peftlab_prefix.default.prompts": (4, 2 * 2 * 2 * 16)}
    with pytest.raises(peftlab.MethodError, match="KV cache"):
        peftlab.merge_adapter(model)


@pytest.mark.parametrize("make", [tiny, tiny_smol], ids=["llama-4q2kv", "smol-9q3kv"])
def test_generate_with_cache_equals_without(make):
    model = make()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 5})
    scale_prompts(model)
    x = ids(2, 6)
    kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=10, **GEN)
    with torch.no_grad():
        cached = model.generate(input_ids=x, **kw)
        uncached = model.generate(input_ids=x, use_cache=False, **kw)
        with peftlab.active_adapters(model, None):
            base = model.generate(input_ids=x, **kw)
    assert torch.equal(cached, uncached) and not torch.equal(cached, base)


def test_mixed_batch_across_prefix_methods():
    """A P-Tuning v2 adapter and a prefix-tuning adapter share one cache: each row sees only its own prefix."""
    model = tiny()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 3}, "v2")
    peftlab.add_adapter(model, "prefix_tuning", {"num_virtual_tokens": 6}, "pt")
    scale_prompts(model, "v2")
    x = ids(3, 7)
    expected = []
    for row, name in enumerate(["pt", None, "v2"]):
        with peftlab.active_adapters(model, name):
            expected.append(logits(model, x)[row])
    with peftlab.mixed_batch(model, ["pt", None, "v2"]):
        mixed = logits(model, x)
    for row in range(3):
        assert (mixed[row] - expected[row]).abs().max() <= 1e-4, f"row {row}"
    assert (expected[2] - expected[1]).abs().max() > 1e-2


def test_peftlab_saved_loads_in_peft(tmp_path):
    from peft import PeftModel

    model = tiny_smol()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 5})
    scale_prompts(model)
    x, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=10, **GEN)
    ours = logits(model, x, mask)
    with torch.no_grad():
        ours_gen = model.generate(input_ids=x, **kw)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["prefix_projection"] is False and cfg["num_attention_heads"] == 3 and cfg["token_dim"] == 24
    assert not (folder / "peftlab_extra.safetensors").exists()  # nothing beyond what peft keeps
    fresh = tiny_smol()
    fresh.load_state_dict(state)
    peft_model = PeftModel.from_pretrained(fresh, str(folder))
    theirs = logits(peft_model, x, mask)
    with torch.no_grad():
        theirs_gen = peft_model.generate(input_ids=x, **kw)
    assert (ours - theirs).abs().max() <= 1e-4
    assert torch.equal(ours_gen, theirs_gen)


@pytest.mark.parametrize("make", [tiny, lambda: tiny("gpt2")], ids=["llama", "gpt2"])
def test_peft_saved_loads_in_peftlab(make, tmp_path):
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(make(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6,
                                                           prefix_projection=False))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=10, **GEN)
    theirs = logits(peft_model, x, mask)
    with torch.no_grad():
        theirs_gen = peft_model.generate(input_ids=x, **kw)
    peft_model.save_pretrained(str(tmp_path / "p"))
    model = make()
    peftlab.load_adapter(model, tmp_path / "p")
    assert peftlab.adapter_state(model).adapters["default"].method == METHOD  # claimed: prefix_projection false
    ours = logits(model, x, mask)
    with torch.no_grad():
        ours_gen = model.generate(input_ids=x, **kw)
    assert (ours - theirs).abs().max() <= 1e-4
    assert torch.equal(ours_gen, theirs_gen)
    assert (ours - logits(make(), x, mask)).abs().max() > 1e-2


def test_peft_saved_classifier_loads_in_peftlab(tmp_path):
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(tiny("llama", "SEQ_CLS"), PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:  # the prompts and the (new) classification head
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = ids(3, 6)
    theirs = logits(peft_model, x)
    peft_model.save_pretrained(str(tmp_path / "p"))
    model = tiny("llama", "SEQ_CLS")
    peftlab.load_adapter(model, tmp_path / "p")
    assert peftlab.adapter_state(model).adapters["default"].method == METHOD
    assert (logits(model, x) - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("cfg,match", [
    ({"num_virtual_tokens": -3}, "num_virtual_tokens"),
    ({"token_dim": 10, "num_attention_heads": 3}, "multiple"),
    ({"init_weights": "normal"}, "init_weights"),
    ({"prefix_projection": True}, "prefix_tuning"),
    ({"encoder_hidden_size": 64}, None),  # written by peft for every PREFIX_TUNING config: accepted, ignored
])
def test_config_validation(cfg, match):
    if match is None:
        assert peftlab.make_config(METHOD, cfg).to_dict()["prefix_projection"] is False
        return
    with pytest.raises(peftlab.ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def test_zero_init():
    model = tiny()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4, "init_weights": "zero"})
    (p,) = peftlab.adapter_parameters(model).values()
    assert torch.count_nonzero(p) == 0


def test_adapter_for_another_model_is_refused(tmp_path):
    model = tiny()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4})
    folder = peftlab.save_adapter(model, tmp_path / "a")
    (folder / "peftlab.json").unlink()  # as if peft made it: no base fingerprint, the plugin checks
    other = tiny_smol(layers=3)
    with pytest.raises(peftlab.AdapterMismatchError, match="num_layers: adapter 2 vs model 3"):
        peftlab.load_adapter(other, folder)
    assert KVGeometry.of(other).describe() == "num_layers=3, key/value heads=3, head_dim=8 (token_dim=24)"


def test_prefix_plus_input_longer_than_the_context_is_refused():
    model = tiny_smol()  # 128 positions
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 8})
    with pytest.raises(peftlab.MethodError, match="exceed the model's context of 128"):
        logits(model, ids(1, 125))


@pytest.fixture(scope="module")
def smollm2():
    from peftlab.models import load_model

    torch.set_num_threads(2)
    return load_model(None)


def base_eval_loss(model, tokenizer, rows: int = 16) -> float:
    """The bare model's loss on the trainer's eval rows (what the adapter must beat, not just its own start)."""
    from peftlab import data as pdata
    from peftlab.train import eval_loss

    _, eval_rows = pdata.split_rows(pdata.load_rows("capitals-json"), 0.1, 0)
    items = pdata.encode_rows(eval_rows[:rows], tokenizer, max_length=128, loss_on="assistant", task="CAUSAL_LM",
                              labels=None)
    with peftlab.active_adapters(model, None):
        return eval_loss(model, items, tokenizer.pad_token_id)


@pytest.mark.smollm2
def test_smollm2_trains(smollm2, tmp_path):
    from peftlab.train import TrainArgs, train

    model, tokenizer = smollm2
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(TrainArgs(method=METHOD, method_config={"num_virtual_tokens": 10}, dataset="capitals-json",
                                 max_steps=12, batch_size=8, max_length=128, output_dir=str(tmp_path / "out"),
                                 eval_every=0, max_eval_samples=16), model=model, tokenizer=tokenizer)
    base = base_eval_loss(model, tokenizer)
    print(f"eval loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f} (base model {base:.3f})")
    assert result.eval_loss_after < 0.5 * result.eval_loss_before
    assert result.eval_loss_after < 0.5 * base  # better than the base model, not just than a random prefix
