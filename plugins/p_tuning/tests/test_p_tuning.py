"""P-Tuning: the contract, interop with peft (both ways, both encoders), resuming from the encoder
state, peft-made adapters served as fixed prompts, mixing with Prompt Tuning, bad input, SmolLM2."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from peftlab import AdapterMismatchError, ConfigError
from peftlab.kit import VirtualTokens
from peftlab.models import tiny_model
from peftlab.testing import (
    check_method,
    check_peft_roundtrip,
    greedy,
    logits,
    random_ids,
    responsive_tiny_model,
    skip_if_peft_fails,
    train_briefly,
    train_steps,
)

METHOD = "p_tuning"
ATOL = 1e-4


def _adapted(k: int = 5, encoder: str = "MLP", name: str = "default", model=None, seed: int = 0, **cfg):
    """An adapter whose encoder weights are random (non-trivial prompts)."""
    model = model or responsive_tiny_model()
    peftlab.add_adapter(
        model,
        METHOD,
        {"num_virtual_tokens": k, "encoder_reparameterization_type": encoder, "encoder_hidden_size": 16, **cfg},
        name,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in VirtualTokens.source(model, name).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


# --- the contract -------------------------------------------------------------------------------------


def test_registered_with_honest_capabilities():
    handle = peftlab.get_method(METHOD)
    caps = handle.capabilities
    assert handle.peft_type == "P_TUNING"
    assert not caps.mergeable and caps.merge_note
    assert caps.virtual_tokens and caps.mixed_batch and caps.stackable and not caps.kv_cache


def test_check_method_mlp(tmp_path):
    # a random tiny model and random token targets leave a soft prompt little to learn: 3% is a clear fall
    report = check_method(METHOD, {"num_virtual_tokens": 8}, lr=3e-3, loss_drop=0.97, tmp_path=tmp_path)
    assert report["generate"] == "ok"


def test_check_method_lstm_seq_cls(tmp_path):
    check_method(
        METHOD,
        {"num_virtual_tokens": 8, "encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 32},
        task="SEQ_CLS",
        lr=3e-3,
        tmp_path=tmp_path,
    )


def test_only_the_encoder_trains():
    model = _adapted(k=4, encoder="LSTM")
    params = peftlab.adapter_parameters(model)
    assert params and all(".peftlab_prompt_encoder.default." in f".{n}" for n in params)
    assert any("lstm_head" in n for n in params) and any("mlp_head" in n for n in params)
    assert any(n.endswith("embedding.weight") for n in params)


# --- saving: peft's file plus the encoder, so training resumes ----------------------------------------


@pytest.mark.parametrize("encoder", ["MLP", "LSTM"])
def test_save_keeps_prompt_for_peft_and_encoder_for_resuming(tmp_path, encoder):
    model = _adapted(k=5, encoder=encoder)
    ids = random_ids()
    want = logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (5, 64)
    source = VirtualTokens.source(model, "default")
    assert torch.allclose(tensors["prompt_embeddings"], source().detach(), atol=1e-6)  # the encoder's output
    extra = load_file(str(folder / "peftlab_extra.safetensors"))
    assert set(extra) == {f"prompt_encoder.{k}" for k in source.state_dict()}

    fresh = responsive_tiny_model()
    peftlab.load_adapter(fresh, folder)
    assert (logits(fresh, ids) - want).abs().max() <= ATOL
    loaded = VirtualTokens.source(fresh, "default")
    assert not loaded.frozen_output
    for k, v in source.state_dict().items():  # the encoder itself came back, not just its output
        assert torch.equal(loaded.state_dict()[k], v)
    assert set(peftlab.adapter_parameters(fresh)) == set(peftlab.adapter_parameters(model))


def test_lstm_dropout_does_not_leak_into_the_saved_prompt(tmp_path):
    model = _adapted(k=4, encoder="LSTM", encoder_num_layers=2, encoder_dropout=0.5)
    model.train()  # saving mid-training: the saved prompt is still the deterministic (eval) one
    folder = peftlab.save_adapter(model, tmp_path / "a")
    source = VirtualTokens.source(model, "default")
    assert source.training
    source.eval()
    saved = load_file(str(folder / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.allclose(saved, source().detach(), atol=1e-6)


# --- interop with peft --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["MLP", "LSTM"])
def test_round_trips_with_peft_and_peft_files_load_as_a_fixed_prompt(tmp_path, encoder):
    skip_if_peft_fails(METHOD)
    from peft import PromptEncoderConfig

    # the encoders get random weights on each side
    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 5, "encoder_reparameterization_type": encoder, "encoder_hidden_size": 16},
        make_model=responsive_tiny_model,
        std=0.5,
        tmp_path=tmp_path,
        peft_config=PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=6, encoder_hidden_size=16, encoder_reparameterization_type=encoder
        ),
    )
    # peft keeps the virtual positions in its logits; peftlab returns the input's
    assert report["to_peft_extra_positions"] == 5 and report["from_peft_extra_positions"] == 6
    assert report["to_peft_max_diff"] <= ATOL and report["from_peft_max_diff"] <= ATOL  # and 10 greedy tokens agree
    # peft kept no encoder: the prompt is served as saved, and is what trains from here on
    model = report["loaded"]
    source = VirtualTokens.source(model, "default")
    assert source.frozen_output
    assert list(peftlab.adapter_parameters(model)) == ["peftlab_prompt_encoder.default.prompt_embeddings"]
    # and it saves again as peft's file alone (no encoder state to keep)
    folder = peftlab.save_adapter(model, tmp_path / "again")
    assert not (folder / "peftlab_extra.safetensors").exists()
    assert torch.equal(load_file(str(folder / "adapter_model.safetensors"))["prompt_embeddings"], source().detach())


def test_training_follows_peft_step_for_step():
    """Same encoder weights, same data, same optimizer: peft's and peftlab's loss curves agree."""
    from peft import PromptEncoderConfig, get_peft_model

    ids = random_ids(length=10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model = _adapted(k=4, encoder="LSTM")
    peft_model = get_peft_model(
        responsive_tiny_model(),
        PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
        ),
    )
    peft_model.prompt_encoder["default"].load_state_dict(VirtualTokens.source(model, "default").state_dict())
    curves = [
        train_steps(model, peftlab.prepare_for_training(model).values(), batch, 4, lr=1e-2),
        train_steps(peft_model, [p for p in peft_model.parameters() if p.requires_grad], batch, 4, lr=1e-2),
    ]
    assert curves[0][-1] < curves[0][0]
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


# --- shared machinery ---------------------------------------------------------------------------------


def test_mixed_batch_with_prompt_tuning():
    model = _adapted(k=4, name="p", seed=1)
    peftlab.add_adapter(model, "prompt_tuning", {"num_virtual_tokens": 7}, "t")
    with torch.no_grad():
        VirtualTokens.source(model, "t").embedding.weight.normal_()
    ids = random_ids(batch=3)
    want = []
    for name in ("p", "t", None):
        with peftlab.active_adapters(model, name):
            want.append((logits(model, ids), greedy(model, ids, n=10)))
    rows = ["p", "t", None]
    with peftlab.mixed_batch(model, rows):
        mixed, replies = logits(model, ids), greedy(model, ids, n=10)
    for i, name in enumerate(rows):
        assert (mixed[i] - want[i][0][i]).abs().max() <= ATOL, f"row {i} ({name})"
        assert torch.equal(replies[i], want[i][1][i]), f"row {i} ({name})"


def test_soft_prompt_is_the_encoder_output():
    model = _adapted(k=5, encoder="MLP")
    handle = peftlab.get_method(METHOD)
    entry = peftlab.adapter_state(model).adapters["default"]
    prompt = handle.hook("soft_prompt")(model=model, config=entry.config, adapter_name="default")
    assert prompt.shape == (5, 64) and not prompt.requires_grad
    assert torch.equal(prompt, VirtualTokens.source(model, "default")().detach())
    assert not torch.equal(prompt, VirtualTokens.source(model, "default").embedding.weight.detach())


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"encoder_reparameterization_type": "GRU"}, "MLP or LSTM"),
        ({"encoder_hidden_size": 0}, "encoder_hidden_size"),
        ({"encoder_num_layers": 0}, "encoder_num_layers"),
        ({"encoder_dropout": 1.5}, "encoder_dropout"),
        ({"num_virtual_tokens": -1}, "num_virtual_tokens"),
    ],
)
def test_bad_config_is_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def test_adapter_for_another_hidden_size_is_refused(tmp_path):
    from peft import PromptEncoderConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    peft_model = get_peft_model(
        tiny_model(), PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16)
    )
    peft_model.save_pretrained(str(tmp_path / "p"))
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    )
    with pytest.raises(AdapterMismatchError, match=r"hidden size 64.*hidden size is 32"):
        peftlab.load_adapter(other, tmp_path / "p")


def test_mlp_ignores_encoder_num_layers_with_a_warning():
    with pytest.warns(UserWarning, match="encoder_num_layers=4 is ignored"):
        peftlab.add_adapter(tiny_model(), METHOD, {"encoder_num_layers": 4})


# --- SmolLM2 ------------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_trains_on_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2
    result = train_briefly(model, tokenizer, METHOD, tmp_path / "out", {"num_virtual_tokens": 16})
    assert result.eval_loss_after < result.eval_loss_before * 0.7
    assert (result.output_dir / "peftlab_extra.safetensors").exists()  # the encoder, to resume from
