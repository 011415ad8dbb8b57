"""Prefix tuning: the contract, the KV-cache mechanics (generate, padding, mixed batches), peft interop, errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DistilBertConfig, DistilBertForSequenceClassification, LlamaConfig

import peftlab
from peftlab.models import tiny_model
from peftlab.testing import check_method
from peftlab_prefix_tuning import KVGeometry

METHOD = "prefix_tuning"
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


def randomize(model, name: str = "default", std: float = 0.5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peftlab.adapter_parameters(model, name).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


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


def logits(model, x, mask=None, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, attention_mask=torch.ones_like(x) if mask is None else mask, **kw).logits


def adapted(cfg: dict | None = None, model=None, name: str = "default"):
    model = tiny() if model is None else model
    peftlab.add_adapter(model, METHOD, cfg or {"num_virtual_tokens": 5}, name)
    randomize(model, name)
    return model


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("llama", "SEQ_CLS"),
                                       ("bert", "SEQ_CLS")])
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
    model = tiny()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4, "encoder_hidden_size": 16})
    params = peftlab.adapter_parameters(model)
    shapes = {k.split(".", 2)[2]: tuple(p.shape) for k, p in params.items()}
    # tiny llama: 2 layers, 2 kv heads × head_dim 16 → token_dim 32; P = MLP(P') has width 2·2·32
    assert shapes == {"embedding.weight": (4, 32), "transform.0.weight": (16, 32), "transform.0.bias": (16,),
                      "transform.2.weight": (128, 16), "transform.2.bias": (128,)}


# --- the KV cache mechanics ---------------------------------------------------------------------


def greedy_without_cache(model, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by hand: the whole sequence each step, no cache passed (the prefix must still act)."""
    for _ in range(steps):
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
        assert out.past_key_values is None  # as the bare model: no cache handed back for use_cache=False
        x = torch.cat([x, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize("make", [tiny, tiny_smol], ids=["llama-4q2kv", "smol-9q3kv"])
def test_generate_with_cache_equals_decoding_without(make):
    model = adapted(model=make())
    x = ids(2, 6)
    with torch.no_grad():
        cached = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10, **GEN)
        uncached = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10,
                                  use_cache=False, **GEN)
        with peftlab.active_adapters(model, None):
            base = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10, **GEN)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_without_cache(model, x, 10))
    assert not torch.equal(cached, base), "the prefix should change what the model generates"


def test_left_padded_batch_generates_like_one_at_a_time():
    model = adapted()
    prompts = [ids(1, n, seed=n)[0] for n in (3, 7, 5)]
    width = max(len(p) for p in prompts)
    x = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, p in enumerate(prompts):
        x[i, width - len(p):], mask[i, width - len(p):] = p, 1
    with torch.no_grad():
        batched = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=8, **GEN)[:, width:]
        for i, p in enumerate(prompts):
            alone = model.generate(input_ids=p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                   max_new_tokens=8, **GEN)[0, len(p):]
            assert torch.equal(batched[i], alone), f"row {i}: {batched[i].tolist()} vs {alone.tolist()}"


def test_loss_with_labels_covers_only_the_real_tokens():
    model = adapted()
    x = ids(2, 9)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
    assert out.logits.shape[:2] == x.shape  # the prefix lives in the cache: no extra positions in the logits
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in peftlab.adapter_parameters(model).values())


def test_mixed_batch_rows_get_their_own_prefix():
    model = adapted({"num_virtual_tokens": 3}, name="a")
    adapted({"num_virtual_tokens": 6}, model=model, name="b")
    randomize(model, "b", seed=2)
    x = ids(3, 7)
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
    randomize(model, "b", seed=2)
    x = ids(3, 5)
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
    x = ids(2, 6)
    with peftlab.active_adapters(model, ["a", "b"]):
        both = logits(model, x)
        with torch.no_grad():
            cached = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, **GEN)
            uncached = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6,
                                      use_cache=False, **GEN)
    with peftlab.active_adapters(model, "a"):
        only_a = logits(model, x)
    assert (both - only_a).abs().max() > 1e-2
    assert torch.equal(cached, uncached)


def test_decoding_by_hand_with_the_returned_cache():
    """A caller may continue the returned cache with a mask over its real tokens only (the prefix is added)."""
    model = adapted()
    x = ids(2, 6)
    with torch.no_grad():
        full = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        first = model(input_ids=x[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long), use_cache=True)
        rest = model(input_ids=x[:, 4:], attention_mask=torch.ones_like(x), past_key_values=first.past_key_values)
    assert (rest.logits - full[:, 4:]).abs().max() <= 1e-4


def test_position_ids_start_after_the_prefix_like_peft():
    model = adapted()
    x = ids(1, 6)
    k = 5
    implicit = logits(model, x)
    explicit = logits(model, x, position_ids=torch.arange(6)[None])  # the caller counts real tokens only
    assert (implicit - explicit).abs().max() <= 1e-5
    shifted = logits(model, x, position_ids=torch.arange(k, k + 6)[None])
    assert (implicit - shifted).abs().max() > 1e-3


# --- interop with peft --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: tiny("llama"), lambda: tiny("gpt2"), tiny_smol],
                         ids=["llama", "gpt2", "smol-gqa"])
def test_peftlab_saved_loads_in_peft(make, tmp_path):
    from peft import PeftModel

    model = adapted({"num_virtual_tokens": 5, "encoder_hidden_size": 24}, model=make())
    state = {k: v for k, v in make().state_dict().items()}
    x, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=10, **GEN)
    ours = logits(model, x, mask)
    with torch.no_grad():
        ours_gen = model.generate(input_ids=x, **kw)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["prefix_projection"] is True
    fresh = make()
    fresh.load_state_dict(state)
    peft_model = PeftModel.from_pretrained(fresh, str(folder))
    theirs = logits(peft_model, x, mask)
    with torch.no_grad():
        theirs_gen = peft_model.generate(input_ids=x, **kw)
    assert (ours - theirs).abs().max() <= 1e-4
    assert torch.equal(ours_gen, theirs_gen)


@pytest.mark.parametrize("make", [lambda: tiny("llama"), lambda: tiny("gpt2"), tiny_smol],
                         ids=["llama", "gpt2", "smol-gqa"])
def test_peft_saved_loads_in_peftlab(make, tmp_path):
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(make(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6,
                                                           prefix_projection=True, encoder_hidden_size=20))
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
    assert peftlab.load_adapter(model, tmp_path / "p") == "default"
    assert peftlab.adapter_state(model).adapters["default"].method == METHOD  # claimed via prefix_projection
    ours = logits(model, x, mask)
    with torch.no_grad():
        ours_gen = model.generate(input_ids=x, **kw)
    assert (ours - theirs).abs().max() <= 1e-4
    assert torch.equal(ours_gen, theirs_gen)
    assert (ours - logits(make(), x, mask)).abs().max() > 1e-2  # the prefix really acts
    # peft keeps only P: the adapter is collapsed, and P itself trains from here
    (name, param), = peftlab.adapter_parameters(model).items()
    assert name.endswith("prompt_embeddings") and param.shape == (6, KVGeometry.of(model).prefix_width)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_saved_classifier_loads_in_peftlab(arch, tmp_path):
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(tiny(arch, "SEQ_CLS"), PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4,
                                                                         prefix_projection=True))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:  # the prefix encoder and the (new) classification head
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = ids(3, 6)
    theirs = logits(peft_model, x)
    peft_model.save_pretrained(str(tmp_path / "p"))
    model = tiny(arch, "SEQ_CLS")
    peftlab.load_adapter(model, tmp_path / "p")  # the head is under peft's prompt-learning key base_model.<head>.*
    assert (logits(model, x) - theirs).abs().max() <= 1e-4


def test_peftlab_saved_classifier_loads_in_peft(tmp_path):
    from peft import PeftModel

    model = adapted(model=tiny("llama", "SEQ_CLS"))
    folder = peftlab.save_adapter(model, tmp_path / "a")
    peft_model = PeftModel.from_pretrained(tiny("llama", "SEQ_CLS"), str(folder))
    x = ids(3, 6)
    assert (logits(model, x) - logits(peft_model, x)).abs().max() <= 1e-4


def test_extra_state_restores_the_mlp(tmp_path):
    model = adapted({"num_virtual_tokens": 4})
    folder = peftlab.save_adapter(model, tmp_path / "a")
    assert (folder / "peftlab_extra.safetensors").exists()
    fresh = tiny()
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
    fresh = tiny()
    with pytest.warns(UserWarning, match="does not reproduce"):
        peftlab.load_adapter(fresh, folder)
    assert (logits(fresh, ids()) - logits(model, ids())).abs().max() <= 1e-5


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg,match", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"num_virtual_tokens": True}, "num_virtual_tokens"),
    ({"token_dim": 30, "num_attention_heads": 4}, "multiple"),
    ({"num_layers": -1}, "num_layers"),
    ({"encoder_hidden_size": 0}, "encoder_hidden_size"),
    ({"init_weights": "gaussian"}, "init_weights"),
    ({"prefix_projection": False}, "p_tuning_v2"),
    ({"num_virtual_tokens": 4, "prefix_dropout": 0.1}, "prefix_dropout"),
])
def test_config_validation(cfg, match):
    with pytest.raises(peftlab.ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def test_peft_config_keys_round_trip():
    handle = peftlab.get_method(METHOD)
    data = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 7, "token_dim": 32,
            "num_attention_heads": 2, "num_layers": 2, "num_transformer_submodules": 1, "encoder_hidden_size": 16,
            "prefix_projection": True, "init_weights": None, "inference_mode": True, "modules_to_save": None}
    cfg = handle.config_class.from_dict(data)
    assert cfg.to_dict() == {"num_virtual_tokens": 7, "token_dim": 32, "num_attention_heads": 2, "num_layers": 2,
                             "init_weights": None, "encoder_hidden_size": 16, "prefix_projection": True}
    assert handle.obj.claims_peft_config(data) and not handle.obj.claims_peft_config({"prefix_projection": False})


def test_zero_init_gives_a_zero_prefix():
    model = tiny()
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
    other = tiny_smol(layers=3)
    with pytest.raises(peftlab.AdapterMismatchError, match="num_hidden_layers: adapter 2 vs model 3"):
        peftlab.load_adapter(other, folder)  # core's fingerprint check (a peftlab-saved adapter)
    (folder / "peftlab.json").unlink()  # now it looks peft-made: the plugin's own check speaks
    with pytest.raises(peftlab.AdapterMismatchError,
                       match=r"num_layers: adapter 2 vs model 3; num_attention_heads: adapter 2 vs model 3; "
                             r"token_dim: adapter 32 vs model 24"):
        peftlab.load_adapter(other, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for key in ("num_layers", "num_attention_heads", "token_dim"):
        cfg.pop(key)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(peftlab.AdapterMismatchError, match=r"shape \(4, 128\) but this model needs \(4, 144\)"):
        peftlab.load_adapter(other, folder)  # no numbers in the config: the tensor shape gives it away


def test_prefix_plus_input_longer_than_the_context_is_refused():
    model = adapted({"num_virtual_tokens": 10})  # tiny llama: 256 positions
    x = ids(1, 250)
    with pytest.raises(peftlab.MethodError, match=r"prefix \(10 virtual tokens\) \+ input \(250 tokens\) = 260"):
        logits(model, x)
    with peftlab.active_adapters(model, None):
        assert logits(model, x).shape[1] == 250  # the base model alone still fits


def test_mixed_batch_of_the_wrong_size_is_refused():
    model = adapted(name="a")
    with peftlab.mixed_batch(model, ["a", None]):
        with pytest.raises(peftlab.MethodError, match="2 rows but the batch has 3"):
            logits(model, ids(3, 5))


def test_gradient_checkpointing_is_refused_rather_than_silently_dropping_the_prefix():
    model = adapted()
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(peftlab.MethodError, match="gradient checkpointing drops the KV cache"):
        model(input_ids=ids(), labels=ids())


def test_bad_adapter_names_are_refused():
    with pytest.raises(peftlab.MethodError, match="cannot contain"):
        peftlab.add_adapter(tiny(), METHOD, {"num_virtual_tokens": 2}, "my.adapter")


# --- the real model -----------------------------------------------------------------------------


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
def test_smollm2_trains_and_generates(smollm2, tmp_path):
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
    # SmolLM2 has 9 query heads and 3 key/value heads: prefixes are shaped by the latter
    P = peftlab.get_method(METHOD).hook("save")(model=model, config=None, adapter_name="default").tensors
    assert P["prompt_embeddings"].shape == (10, 30 * 2 * 3 * 64)
    x = tokenizer(["The capital of France is", "Hi"], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        cached = model.generate(**x, **kw)
        uncached = model.generate(**x, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
