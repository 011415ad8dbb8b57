"""LoRA: the conformance kit, numerics against peft both ways, several adapters, mixed batches, SmolLM2."""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab import MethodError
from peftlab.generate import generate_batch
from peftlab.models import load_model, tiny_model
from peftlab.testing import check_method

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("arch,task,cfg", [
    ("llama", "CAUSAL_LM", {}),
    ("llama", "CAUSAL_LM", {"target_modules": "all-linear", "init_lora_weights": "gaussian"}),
    ("llama", "CAUSAL_LM", {"target_modules": r".*\.layers\.1\.mlp\.(up|down)_proj", "lora_dropout": 0.1}),
    ("gpt2", "CAUSAL_LM", {"bias": "all"}),  # Conv1D layers
    ("bert", "SEQ_CLS", {}),
    ("llama", "SEQ_CLS", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
])
def test_lora_passes_the_conformance_kit(arch, task, cfg, tmp_path):
    # lr 1e-2: Adam at the kit's 3e-2 oscillates on some of these tiny random models
    report = check_method("lora", cfg, arch=arch, task=task, tmp_path=tmp_path, lr=1e-2)
    assert report["reload_max_diff"] <= 1e-5 and report["merge_max_diff"] <= 1e-4


def _random_lora(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _peft_config(**kw):
    return peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kw)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_save_loads_in_peft_with_the_same_logits(arch, tmp_path):
    model = tiny_model(arch)
    peftlab.add_adapter(model, "lora", {"r": 4, "lora_alpha": 8})
    _random_lora(model)
    ids = torch.arange(3, 19).view(2, 8)
    ours = _logits(model, ids)
    peftlab.save_adapter(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "ours")
    assert (_logits(theirs, ids) - ours).abs().max() <= 1e-4


@pytest.mark.parametrize("kw", [{}, {"use_rslora": True}, {"bias": "lora_only"}])
def test_lora_load_from_peft_gives_the_same_logits(kw, tmp_path):
    ref = peft.get_peft_model(tiny_model(), _peft_config(**kw))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_" in n or (kw.get("bias") and n.endswith("bias")):
                p.normal_(0, 0.1)
    ids = torch.arange(3, 19).view(2, 8)
    expected = _logits(ref, ids)
    ref.save_pretrained(tmp_path / "peft")
    model = tiny_model()
    peftlab.load_adapter(model, tmp_path / "peft")
    assert (_logits(model, ids) - expected).abs().max() <= 1e-4


def test_lora_targets_that_match_nothing_list_what_exists():
    with pytest.raises(MethodError, match=r"matched no module; linear layers here: .*'q_proj'"):
        peftlab.add_adapter(tiny_model(), "lora", {"target_modules": ["qproj"]})


def test_lora_refuses_non_linear_targets():
    with pytest.raises(MethodError, match="supports Linear and Conv1D"):
        peftlab.add_adapter(tiny_model(), "lora", {"target_modules": ["embed_tokens"]})


def test_lora_several_named_adapters_and_switching():
    model = tiny_model()
    ids = torch.arange(3, 15).view(1, -1)
    base = _logits(model, ids)
    peftlab.add_adapter(model, "lora", {"r": 2}, name="a")
    peftlab.add_adapter(model, "lora", {"r": 4, "target_modules": ["o_proj"]}, name="b")
    _random_lora(model)
    peftlab.set_active(model, ["a"])
    only_a = _logits(model, ids)
    peftlab.set_active(model, ["b"])
    only_b = _logits(model, ids)
    peftlab.set_active(model, ["a", "b"])
    both = _logits(model, ids)
    peftlab.set_active(model, None)
    assert torch.equal(_logits(model, ids), base)
    assert not torch.allclose(only_a, only_b) and not torch.allclose(both, only_a)
    with pytest.raises(KeyError, match="no adapter named 'c'"):
        peftlab.set_active(model, ["c"])


def test_lora_mixed_batch_rows_match_running_each_alone():
    model = tiny_model()
    peftlab.add_adapter(model, "lora", {"r": 2}, name="a")
    peftlab.add_adapter(model, "lora", {"r": 2}, name="b")
    _random_lora(model)
    ids = torch.arange(3, 15).view(1, -1).repeat(3, 1)
    with peftlab.mixed_batch(model, ["a", "b", None]):
        mixed = _logits(model, ids)
    for row, name in enumerate(["a", "b", None]):
        with peftlab.active_adapters(model, name):
            alone = _logits(model, ids[:1])
        assert (mixed[row] - alone[0]).abs().max() <= 1e-5, f"row {row} ({name})"


def test_lora_merge_then_unmerge_restores_the_weights():
    model = tiny_model()
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    peftlab.add_adapter(model, "lora")
    _random_lora(model)
    peftlab.merge_adapter(model)
    merged = model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    peftlab.unmerge_adapter(model)
    assert not torch.allclose(merged, before)
    assert torch.allclose(model.model.layers[0].self_attn.q_proj.base_layer.weight, before, atol=1e-6)


# --- the real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model(smollm2_dir, dtype="float32", device="cpu")


@pytest.mark.smollm2
def test_lora_on_smollm2_round_trips_with_peft_both_ways(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    source = model.peftlab_source
    ids = tok(["The capital of France is", "Two plus two equals four."], return_tensors="pt", padding=True)
    peftlab.add_adapter(model, "lora", {"r": 8, "target_modules": "all-linear"}, name="interop")
    _random_lora(model)
    with peftlab.active_adapters(model, "interop"), torch.no_grad():
        ours = model(**ids).logits
    peftlab.save_adapter(model, tmp_path / "ours", "interop")
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), tmp_path / "ours")
    with torch.no_grad():
        peft_logits = theirs(**ids).logits
    assert (peft_logits - ours).abs().max() <= 1e-4
    # and back: peft's save loads here with the same logits
    theirs.save_pretrained(tmp_path / "theirs")
    fresh, _ = load_model(source, dtype="float32", device="cpu")
    peftlab.load_adapter(fresh, tmp_path / "theirs")
    with torch.no_grad():
        assert (fresh(**ids).logits - peft_logits).abs().max() <= 1e-4


@pytest.mark.smollm2
def test_lora_trains_on_smollm2_and_mixed_batch_chat_matches_separate_runs(smollm2_dir, tmp_path):
    from peftlab.evaluate import evaluate
    from peftlab.train import TrainArgs, train

    model, tok = load_model(smollm2_dir, dtype="float32", device="cpu")
    res = train(TrainArgs(method="lora", method_config={"r": 8, "target_modules": "all-linear"},
                          dataset="capitals-json", max_steps=12, learning_rate=2e-3, batch_size=8, max_length=128,
                          max_eval_samples=16, output_dir=str(tmp_path / "run")), model=model, tokenizer=tok)
    assert res.eval_loss_after < 0.5 * res.eval_loss_before, (res.eval_loss_before, res.eval_loss_after)
    assert 0.1 < res.params["percent"] < 5
    metrics = evaluate(model, tok, "capitals-json", max_samples=8, max_new_tokens=24)
    assert metrics["adapted"]["exact_match"] > metrics["base"]["exact_match"]
    assert metrics["adapted"]["eval_loss"] < metrics["base"]["eval_loss"]
    # base and adapted replies in one batched pass equal running each alone
    prompts = ["Paris serves as the capital of France.", "Lima is the capital of Peru."]
    mixed = generate_batch(model, tok, prompts * 2, max_new_tokens=16, rows=["default"] * 2 + [None] * 2)
    with peftlab.active_adapters(model, None):
        base = generate_batch(model, tok, prompts, max_new_tokens=16)
    with peftlab.active_adapters(model, "default"):
        adapted = generate_batch(model, tok, prompts, max_new_tokens=16)
    assert mixed == adapted + base
    assert adapted != base
    # merged generation equals unmerged
    peftlab.merge_adapter(model)
    assert generate_batch(model, tok, prompts, max_new_tokens=16) == adapted
