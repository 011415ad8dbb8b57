"""LoRA: the conformance kit, numerics against peft both ways, several adapters, mixed batches, SmolLM2."""

from __future__ import annotations

import warnings

import pytest
import torch

import peftlab
from peftlab import MethodError
from peftlab.generate import generate_batch
from peftlab.models import load_model, load_tokenizer, tiny_model
from peftlab.testing import check_method, check_peft_roundtrip, logits

peft = pytest.importorskip("peft")


@pytest.mark.parametrize(
    "arch,task,cfg",
    [
        ("llama", "CAUSAL_LM", {}),
        ("llama", "CAUSAL_LM", {"target_modules": "all-linear", "init_lora_weights": "gaussian"}),
        ("llama", "CAUSAL_LM", {"target_modules": r".*\.layers\.1\.mlp\.(up|down)_proj", "lora_dropout": 0.1}),
        ("gpt2", "CAUSAL_LM", {"bias": "all"}),  # Conv1D layers
        ("bert", "SEQ_CLS", {}),
        ("llama", "SEQ_CLS", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
    ],
)
def test_lora_passes_the_conformance_kit(arch, task, cfg, tmp_path):
    # lr 1e-2: Adam at the kit's 3e-2 oscillates on some of these tiny random models
    report = check_method("lora", cfg, arch=arch, task=task, tmp_path=tmp_path, lr=1e-2)
    assert report["reload_max_diff"] <= 1e-5 and report["merge_max_diff"] <= 1e-4


def _random_lora(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1)


def _peft_config(**kw):
    return peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kw)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_round_trips_with_peft_with_the_same_logits(arch, tmp_path):
    report = check_peft_roundtrip("lora", {"r": 4, "lora_alpha": 8}, arch=arch, tmp_path=tmp_path)
    assert report["to_peft_max_diff"] <= 1e-4 and report["from_peft_max_diff"] <= 1e-4


@pytest.mark.parametrize("kw", [{}, {"use_rslora": True}, {"bias": "lora_only"}])
def test_lora_load_from_peft_gives_the_same_logits(kw, tmp_path):
    # peft's trainable parameters (the LoRA weights, and the adapted layers' biases for bias="lora_only") get random
    # values before saving
    report = check_peft_roundtrip("lora", peft_config=_peft_config(**kw), directions=["from_peft"], tmp_path=tmp_path)
    assert report["from_peft_max_diff"] <= 1e-4


@pytest.mark.parametrize("key,pattern", [("alpha_pattern", {"q_proj": 64}), ("rank_pattern", {"v_proj": 2})])
def test_per_module_rank_or_alpha_from_peft_is_refused_not_ignored(key, pattern, tmp_path):
    """peftlab's LoRA has one r and one alpha: a peft adapter giving some modules their own would load (and merge)
    with the wrong scaling, so it is refused by name; an empty pattern (what peft writes by default) loads."""
    from peftlab import ConfigError
    from peftlab_lora.config import LoraConfig

    data = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    with pytest.raises(ConfigError, match=f"LoraConfig does not support {key}="):
        LoraConfig.from_dict({**data, key: pattern}, source="adapter_config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LoraConfig.from_dict({**data, "rank_pattern": {}, "alpha_pattern": {}}).lora_alpha == 16

    model = tiny_model()
    peft_model = peft.get_peft_model(model, _peft_config(**{key: pattern}))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    with pytest.raises(ConfigError, match=f"does not support {key}="):
        peftlab.load_adapter(tiny_model(), tmp_path / "peft")


def test_lora_targets_that_match_nothing_list_what_exists():
    with pytest.raises(MethodError, match=r"matched no module; linear layers here: .*'q_proj'"):
        peftlab.add_adapter(tiny_model(), "lora", {"target_modules": ["qproj"]})


def test_lora_refuses_non_linear_targets():
    with pytest.raises(MethodError, match="supports Linear and Conv1D"):
        peftlab.add_adapter(tiny_model(), "lora", {"target_modules": ["embed_tokens"]})


def test_lora_several_named_adapters_and_switching():
    model = tiny_model()
    ids = torch.arange(3, 15).view(1, -1)
    base = logits(model, ids)
    peftlab.add_adapter(model, "lora", {"r": 2}, name="a")
    peftlab.add_adapter(model, "lora", {"r": 4, "target_modules": ["o_proj"]}, name="b")
    _random_lora(model)
    peftlab.set_active(model, ["a"])
    only_a = logits(model, ids)
    peftlab.set_active(model, ["b"])
    only_b = logits(model, ids)
    peftlab.set_active(model, ["a", "b"])
    both = logits(model, ids)
    peftlab.set_active(model, None)
    assert torch.equal(logits(model, ids), base)
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
        mixed = logits(model, ids)
    for row, name in enumerate(["a", "b", None]):
        with peftlab.active_adapters(model, name):
            alone = logits(model, ids[:1])
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


@pytest.mark.smollm2
def test_lora_on_smollm2_round_trips_with_peft_both_ways(smollm2_dir, tmp_path):
    tok = load_tokenizer(smollm2_dir)
    ids = tok(["The capital of France is", "Two plus two equals four."], return_tensors="pt", padding=True)
    report = check_peft_roundtrip(
        "lora",
        {"r": 8, "target_modules": "all-linear"},
        make_model=lambda: load_model(smollm2_dir, dtype="float32", device="cpu")[0],
        inputs=(ids["input_ids"], ids["attention_mask"]),
        generate=False,
        tmp_path=tmp_path,
    )
    assert report["to_peft_max_diff"] <= 1e-4 and report["from_peft_max_diff"] <= 1e-4


@pytest.mark.smollm2
def test_lora_trains_on_smollm2_and_mixed_batch_chat_matches_separate_runs(smollm2_dir, tmp_path):
    from peftlab.evaluate import evaluate
    from peftlab.train import TrainArgs, train

    model, tok = load_model(smollm2_dir, dtype="float32", device="cpu")
    res = train(
        TrainArgs(
            method="lora",
            method_config={"r": 8, "target_modules": "all-linear"},
            dataset="capitals-json",
            max_steps=12,
            learning_rate=2e-3,
            batch_size=8,
            max_length=128,
            max_eval_samples=16,
            output_dir=str(tmp_path / "run"),
        ),
        model=model,
        tokenizer=tok,
    )
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
