"""P-Tuning: the contract, interop with peft (both ways, both encoders), resuming from the encoder
state, peft-made adapters served as fixed prompts, mixing with Prompt Tuning, bad input, SmolLM2."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from peftlab import AdapterMismatchError, ConfigError
from peftlab.models import load_model, tiny_model
from peftlab.testing import check_method
from peftlab_prompt_tuning import VirtualTokens

METHOD = "p_tuning"
ATOL = 1e-4


def _model(task: str = "CAUSAL_LM"):
    """The tiny llama with weights 10x its init scale, so greedy replies depend on the whole context."""
    model = tiny_model(task=task)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def _greedy(model, ids, n: int = 10, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                              pad_token_id=0, eos_token_id=None, **kw)[:, ids.shape[1]:]


def _adapted(k: int = 5, encoder: str = "MLP", name: str = "default", model=None, seed: int = 0, **cfg):
    """An adapter whose encoder weights are random (non-trivial prompts)."""
    model = model or _model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": k, "encoder_reparameterization_type": encoder,
                                        "encoder_hidden_size": 16, **cfg}, name)
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
    check_method(METHOD, {"num_virtual_tokens": 8, "encoder_reparameterization_type": "LSTM",
                          "encoder_hidden_size": 32}, task="SEQ_CLS", lr=3e-3, tmp_path=tmp_path)


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
    ids = _ids()
    want = _logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (5, 64)
    source = VirtualTokens.source(model, "default")
    assert torch.allclose(tensors["prompt_embeddings"], source().detach(), atol=1e-6)  # the encoder's output
    extra = load_file(str(folder / "peftlab_extra.safetensors"))
    assert set(extra) == {f"prompt_encoder.{k}" for k in source.state_dict()}

    fresh = _model()
    peftlab.load_adapter(fresh, folder)
    assert (_logits(fresh, ids) - want).abs().max() <= ATOL
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
def test_peftlab_adapter_loads_in_peft(tmp_path, encoder):
    from peft import PeftModel

    model = _adapted(k=5, encoder=encoder)
    ids = _ids()
    ours = _logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    peft_model = PeftModel.from_pretrained(_model(), str(folder))
    theirs = _logits(peft_model, ids)
    assert theirs.shape[1] == 5 + ids.shape[1]  # peft keeps the virtual positions; peftlab returns the input's
    assert (theirs[:, 5:] - ours).abs().max() <= ATOL
    assert torch.equal(_greedy(peft_model, ids), _greedy(model, ids))


@pytest.mark.parametrize("encoder", ["MLP", "LSTM"])
def test_peft_adapter_loads_in_peftlab_as_fixed_prompt(tmp_path, encoder):
    from peft import PromptEncoderConfig, get_peft_model

    peft_model = get_peft_model(_model(), PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=6, encoder_hidden_size=16, encoder_reparameterization_type=encoder))
    with torch.no_grad():
        for p in peft_model.prompt_encoder["default"].parameters():
            p.normal_()
    peft_model.eval()
    ids = _ids()
    theirs = _logits(peft_model, ids)[:, 6:]
    peft_model.save_pretrained(str(tmp_path / "p"))
    model = _model()
    peftlab.load_adapter(model, tmp_path / "p")
    assert (_logits(model, ids) - theirs).abs().max() <= ATOL
    assert torch.equal(_greedy(model, ids), _greedy(peft_model, ids))
    # peft kept no encoder: the prompt is served as saved, and is what trains from here on
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

    ids = _ids(length=10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model = _adapted(k=4, encoder="LSTM")
    peft_model = get_peft_model(_model(), PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"))
    peft_model.prompt_encoder["default"].load_state_dict(VirtualTokens.source(model, "default").state_dict())
    curves = []
    for m, params in ((model, peftlab.prepare_for_training(model).values()),
                      (peft_model, [p for p in peft_model.parameters() if p.requires_grad])):
        opt, losses = torch.optim.AdamW(list(params), lr=1e-2), []
        m.train()
        for _ in range(4):
            loss = m(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0]
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


# --- shared machinery ---------------------------------------------------------------------------------


def test_mixed_batch_with_prompt_tuning():
    model = _adapted(k=4, name="p", seed=1)
    peftlab.add_adapter(model, "prompt_tuning", {"num_virtual_tokens": 7}, "t")
    with torch.no_grad():
        VirtualTokens.source(model, "t").embedding.weight.normal_()
    ids = _ids(batch=3)
    want = []
    for name in ("p", "t", None):
        with peftlab.active_adapters(model, name):
            want.append((_logits(model, ids), _greedy(model, ids)))
    rows = ["p", "t", None]
    with peftlab.mixed_batch(model, rows):
        logits, replies = _logits(model, ids), _greedy(model, ids)
    for i, name in enumerate(rows):
        assert (logits[i] - want[i][0][i]).abs().max() <= ATOL, f"row {i} ({name})"
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


@pytest.mark.parametrize("cfg, match", [
    ({"encoder_reparameterization_type": "GRU"}, "MLP or LSTM"),
    ({"encoder_hidden_size": 0}, "encoder_hidden_size"),
    ({"encoder_num_layers": 0}, "encoder_num_layers"),
    ({"encoder_dropout": 1.5}, "encoder_dropout"),
    ({"num_virtual_tokens": -1}, "num_virtual_tokens"),
])
def test_bad_config_is_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def test_adapter_for_another_hidden_size_is_refused(tmp_path):
    from peft import PromptEncoderConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    peft_model = get_peft_model(tiny_model(), PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                                  encoder_hidden_size=16))
    peft_model.save_pretrained(str(tmp_path / "p"))
    other = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    with pytest.raises(AdapterMismatchError, match=r"hidden size 64.*hidden size is 32"):
        peftlab.load_adapter(other, tmp_path / "p")


def test_mlp_ignores_encoder_num_layers_with_a_warning():
    with pytest.warns(UserWarning, match="encoder_num_layers=4 is ignored"):
        peftlab.add_adapter(tiny_model(), METHOD, {"encoder_num_layers": 4})


# --- SmolLM2 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_model(None)


@pytest.mark.smollm2
def test_trains_on_smollm2(smollm2, tmp_path):
    from peftlab.train import TrainArgs, train

    model, tokenizer = smollm2
    result = train(TrainArgs(method=METHOD, method_config={"num_virtual_tokens": 16}, dataset="capitals-json",
                             max_steps=12, batch_size=8, max_length=128, output_dir=str(tmp_path / "out"),
                             eval_every=0, max_eval_samples=16), model=model, tokenizer=tokenizer)
    print(f"p_tuning on SmolLM2: eval loss {result.eval_loss_before:.3f} → {result.eval_loss_after:.3f}")
    assert result.eval_loss_after < result.eval_loss_before * 0.7
    assert (result.output_dir / "peftlab_extra.safetensors").exists()  # the encoder, to resume from
